"""Load the authors' NeoNeXt implementation on a CPU-only machine, without changing it.

The authors' repository (github HapKoM/neonext) keeps NeoCell in the package
``ptvision.models.neonext``. Importing that package the ordinary way fails without
CUDA: its ``__init__`` compiles the C++ helper ``csrc/neocell.cpp`` through a builder
that insists on a CUDA toolkit, although the file itself is plain C++ on top of
LibTorch. This module gets the same objects another way:

1. it compiles ``csrc/neocell.cpp`` for the CPU with
   :func:`torch.utils.cpp_extension.load` (needs a C++ compiler and ``ninja``), into a
   cache folder outside any repository (see :func:`default_build_dir`);
2. it puts empty stand-ins for the packages ``ptvision``, ``ptvision.models`` and
   ``ptvision.models.neonext`` into :data:`sys.modules` -- each with its real folder as
   ``__path__`` and the last one carrying the compiled helper under the name the
   authors' modules import it by -- so that importing the modules
   ``neonext_utils`` and ``neonext`` (and ``ptvision.nvtx_profiler``, which they use)
   runs the authors' files as they are, while no ``__init__`` file runs;
3. it restores :data:`sys.modules` afterwards: the loaded modules keep working (their
   globals hold what they imported), and nothing named ``ptvision`` is left behind to
   clash with another checkout or a real installation.

No file of the checkout is modified, copied or byte-compiled into it.

Public API (used by ``scripts/official_data.py`` and by benchmarks)::

    from official_loader import load_official, OfficialImplementation
    impl = load_official(checkout)                 # checkout folder -> OfficialImplementation
    impl.NeoCellMatrices                           # their torch.autograd.Function
    impl.neocell_layer(specs, dtype=torch.float64)  # their NeoCellCPP module, weights to set
    impl.neocell_apply(x, weights_a, weights_b, specs)  # their forward, sizes as they compute them
    impl.build_model(**config)                     # their NeoNeXt class, constructed quietly

Only :func:`validate_checkout` and :func:`checkout_commit` work without PyTorch; every
other entry point imports it when called.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import os
import subprocess
import sys
import tempfile
import types
from dataclasses import dataclass
from pathlib import Path

#: Commit of the authors' repository that ``tests/data/official_*`` were produced with.
EXPECTED_COMMIT = "ea32509"

#: Files of a checkout this loader needs, relative to its root.
NEONEXT_DIR = Path("ptvision") / "models" / "neonext"
REQUIRED_FILES = (
    NEONEXT_DIR / "csrc" / "neocell.cpp",
    NEONEXT_DIR / "neonext_utils.py",
    NEONEXT_DIR / "neonext.py",
    Path("ptvision") / "nvtx_profiler.py",
)

#: Names of the stand-in packages placed in ``sys.modules`` while loading.
_STAND_INS = ("ptvision", "ptvision.models", "ptvision.models.neonext")
#: Modules of the checkout that are imported, in dependency order.
_MODULES = ("ptvision.nvtx_profiler", "ptvision.models.neonext.neonext_utils", "ptvision.models.neonext.neonext")
#: The attribute of ``ptvision.models.neonext`` that ``neonext_utils`` imports the helper by.
_HELPER_ATTRIBUTE = "neonext_cpp_module"


class NotACheckoutError(ValueError):
    """The given path is not a checkout of the authors' repository (message is one line)."""


def validate_checkout(path) -> Path:
    """Resolve ``path`` and check that it holds the files this loader needs.

    Parameters
    ----------
    path : str or os.PathLike
        Root folder of a checkout of github HapKoM/neonext.

    Returns
    -------
    pathlib.Path
        The resolved root.

    Raises
    ------
    NotACheckoutError
        If ``path`` does not exist, is not a folder, or lacks one of :data:`REQUIRED_FILES`;
        the message names the path and the first missing file.
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise NotACheckoutError(f"--official {str(path)!r}: no such folder")
    if not root.is_dir():
        raise NotACheckoutError(f"--official {str(path)!r}: not a folder")
    root = root.resolve()
    for relative in REQUIRED_FILES:
        if not (root / relative).is_file():
            raise NotACheckoutError(
                f"--official {str(path)!r}: not a checkout of the authors' NeoNeXt repository "
                f"(missing {relative.as_posix()})"
            )
    return root


def checkout_commit(root) -> str | None:
    """Full commit hash the checkout at ``root`` is at, or ``None`` if it cannot be told.

    Uses ``git rev-parse HEAD`` when ``root/.git`` exists and git is installed.
    """
    root = Path(root)
    if not (root / ".git").exists():
        return None
    try:
        done = subprocess.run(
            ["git", "-c", f"safe.directory={root}", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and commit else None


def default_build_dir() -> Path:
    """Root of the build cache: ``$NEOCELL_OFFICIAL_BUILD_DIR``, else a user cache folder.

    Defaults to ``neocell_ref/official-build`` inside the user cache folder
    (``$XDG_CACHE_HOME``, else ``.cache`` in the home folder), or inside the system
    temporary folder when no home folder can be found. Each build gets a sub-folder named by a hash of the C++ source,
    the PyTorch version and the compiler flags, so a changed source is never mixed up
    with an old build.
    """
    chosen = os.environ.get("NEOCELL_OFFICIAL_BUILD_DIR")
    if chosen:
        return Path(chosen).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME")
    if not cache:
        try:
            cache = str(Path.home() / ".cache")
        except RuntimeError:
            cache = tempfile.gettempdir()
    return Path(cache) / "neocell_ref" / "official-build"


#: Compiler flags of the CPU build (optimised like the authors' own build, without debug info).
CXX_FLAGS = ("-O3",)


@dataclass(frozen=True)
class OfficialImplementation:
    """The authors' NeoCell and NeoNeXt, loaded from a checkout for the CPU.

    Attributes
    ----------
    root : pathlib.Path
        The checkout.
    commit : str or None
        Its commit (``None`` when it cannot be told, e.g. no ``.git``).
    helper : module
        Their compiled ``csrc/neocell.cpp`` (``get_matrices_forward``/``get_matrices_backward``).
    utils : module
        Their ``neonext_utils`` module (``NeoCellCPP``, ``NeoCellMatrices``, layers, ``neo_init``).
    model : module
        Their ``neonext`` module (``NeoNeXt``, ``neonext_t`` ...).
    """

    root: Path
    commit: str | None
    helper: types.ModuleType
    utils: types.ModuleType
    model: types.ModuleType

    @property
    def NeoCellMatrices(self):  # their class name
        """Their ``torch.autograd.Function``: ``apply(x, specs, a_h, a_w, b_h, b_w, *weights_a, *weights_b)``."""
        return self.utils.NeoCellMatrices

    @property
    def NeoCellCPP(self):  # their class name
        """Their NeoCell ``torch.nn.Module`` class (constructor argument: the list of group dicts)."""
        return self.utils.NeoCellCPP

    @property
    def NeoNeXt(self):  # their class name
        """Their NeoNeXt ``torch.nn.Module`` class."""
        return self.model.NeoNeXt

    def neocell_layer(self, specs, *, dtype=None, seed: int = 0):
        """Their NeoCell module for ``specs``, its random weights drawn under ``seed``.

        Parameters
        ----------
        specs : list of dict
            Channel groups in the official dict forms (``kernel``/``channels``/``shift``,
            ``h_in``/``h_out``/``w_in``/``w_out``, ``kernel_a``/``kernel_b``,
            ``shift_a``/``shift_b``); values are converted to ``int``.
        dtype : torch.dtype, optional
            Parameter dtype (default: float32, as they construct it).
        seed : int
            Seed of ``torch.manual_seed`` before construction (their constructor draws
            ``weight_a``/``weight_b`` with ``torch.randn``); overwrite the weights to use
            your own.

        Returns
        -------
        torch.nn.Module
            ``weight_a[g]`` has shape ``(channels_g, h_out, h_in)``, ``weight_b[g]``
            ``(channels_g, w_in, w_out)``; ``forward(x)`` maps ``(N, C, H, W)`` to
            ``(N, C, H_out, W_out)``.
        """
        import torch

        torch.manual_seed(seed)
        layer = self.NeoCellCPP(official_specs(specs))
        return layer if dtype is None else layer.to(dtype)

    def neocell_apply(self, x, weights_a, weights_b, specs):
        """Their NeoCell forward on tensors, output size computed as their module does.

        Parameters
        ----------
        x : torch.Tensor, shape (N, C, H, W)
        weights_a : sequence of torch.Tensor, shapes (channels_g, h_out_g, h_in_g)
        weights_b : sequence of torch.Tensor, shapes (channels_g, w_in_g, w_out_g)
        specs : list of dict
            One dict per group, as for :meth:`neocell_layer`.

        Returns
        -------
        torch.Tensor, shape (N, C, H_out, W_out)
            Differentiable through their ``NeoCellMatrices`` backward.
        """
        specs = official_specs(specs)
        # their calculate_matrix_size reads only self.channel_specs and self.parse_spec
        holder = types.SimpleNamespace(channel_specs=specs)
        holder.parse_spec = types.MethodType(self.NeoCellCPP.parse_spec, holder)
        sizes = self.NeoCellCPP.calculate_matrix_size(holder, x)
        return self.NeoCellMatrices.apply(x, specs, *sizes, *weights_a, *weights_b)

    def build_model(self, *, seed: int = 0, quiet: bool = True, **config):
        """Their ``NeoNeXt(**config)``, constructed under ``torch.manual_seed(seed)``.

        ``quiet`` swallows what their constructors print (one line per option and block).
        """
        import torch

        torch.manual_seed(seed)
        sink = io.StringIO()
        with contextlib.redirect_stdout(sink) if quiet else contextlib.nullcontext():
            return self.NeoNeXt(**config)


def official_specs(specs) -> list[dict]:
    """Copy of ``specs`` as their C++ helper accepts them: a list of ``{str: int}`` dicts.

    Raises
    ------
    TypeError
        If ``specs`` is not a list of dicts, or a value is not an integer.
    """
    if not isinstance(specs, (list, tuple)) or not all(isinstance(group, dict) for group in specs):
        raise TypeError(f"specs: expected a list of dicts, got {specs!r}")
    converted = []
    for index, group in enumerate(specs):
        out = {}
        for key, value in group.items():
            if isinstance(value, bool) or int(value) != value:
                raise TypeError(f"specs[{index}][{key!r}]: expected an integer, got {value!r}")
            out[str(key)] = int(value)
        converted.append(out)
    return converted


_LOADED: dict[tuple[Path, Path], OfficialImplementation] = {}


def load_official(checkout, *, build_dir=None, verbose: bool = False) -> OfficialImplementation:
    """Load the authors' implementation from ``checkout`` for the CPU (cached per process).

    Parameters
    ----------
    checkout : str or os.PathLike
        Root of a checkout of github HapKoM/neonext (checked by :func:`validate_checkout`).
    build_dir : str or os.PathLike, optional
        Root of the build cache (default :func:`default_build_dir`); keep it outside any
        repository.
    verbose : bool
        Show the compiler's output.

    Returns
    -------
    OfficialImplementation

    Raises
    ------
    NotACheckoutError
        If ``checkout`` is not a checkout.
    ImportError
        If PyTorch or ninja is missing (the message says to install the ``official`` extra).
    """
    root = validate_checkout(checkout)
    cache_root = Path(build_dir).expanduser().resolve() if build_dir is not None else default_build_dir()
    key = (root, cache_root)
    if key in _LOADED:
        return _LOADED[key]
    helper = _build_helper(root, cache_root, verbose=verbose)
    utils, model = _import_modules(root, helper)
    loaded = OfficialImplementation(root=root, commit=checkout_commit(root), helper=helper, utils=utils, model=model)
    _LOADED[key] = loaded
    return loaded


def _require_build_tools():
    missing = []
    for name in ("torch", "ninja"):
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ImportError(
            f"{' and '.join(missing)} not importable; install the 'official' extra: "
            'python -m pip install ".[official]"'
        )


def _build_helper(root: Path, cache_root: Path, *, verbose: bool):
    """Compile (or reuse the cached build of) their ``csrc/neocell.cpp`` for the CPU."""
    _require_build_tools()
    import torch
    from torch.utils.cpp_extension import load

    source = root / NEONEXT_DIR / "csrc" / "neocell.cpp"
    digest = hashlib.sha256()
    digest.update(source.read_bytes())
    digest.update(torch.__version__.encode())
    digest.update(" ".join(CXX_FLAGS).encode())
    tag = digest.hexdigest()[:16]
    build_dir = cache_root / tag
    build_dir.mkdir(parents=True, exist_ok=True)
    return load(
        name=f"neonext_official_cpu_{tag}",
        sources=[str(source)],
        extra_cflags=list(CXX_FLAGS),
        build_directory=str(build_dir),
        verbose=verbose,
    )


def _import_modules(root: Path, helper):
    """Import their ``neonext_utils`` and ``neonext`` with stand-in parent packages."""
    folders = {
        "ptvision": root / "ptvision",
        "ptvision.models": root / "ptvision" / "models",
        "ptvision.models.neonext": root / NEONEXT_DIR,
    }
    touched = set(_STAND_INS) | set(_MODULES)
    before = {name: sys.modules[name] for name in touched if name in sys.modules}
    write_bytecode = sys.dont_write_bytecode
    sys.dont_write_bytecode = True  # never write __pycache__ into their checkout
    try:
        for name in touched:
            sys.modules.pop(name, None)
        for name in _STAND_INS:
            package = types.ModuleType(name, f"stand-in for {name} (its __init__ is not run)")
            package.__path__ = [str(folders[name])]
            package.__package__ = name
            sys.modules[name] = package
        setattr(sys.modules["ptvision.models.neonext"], _HELPER_ATTRIBUTE, helper)
        with contextlib.redirect_stdout(io.StringIO()), _quiet_deprecations():
            loaded = [importlib.import_module(name) for name in _MODULES]
        for module in loaded:  # a guard: the stand-ins' __path__ must have been used
            if root not in Path(module.__file__).parents:
                raise ImportError(f"{module.__name__} was imported from {module.__file__}, not from {root}")
        return loaded[1], loaded[2]
    finally:
        sys.dont_write_bytecode = write_bytecode
        for name in touched:
            sys.modules.pop(name, None)
        sys.modules.update(before)


@contextlib.contextmanager
def _quiet_deprecations():
    """Hide PyTorch's FutureWarning about ``torch.cuda.amp.custom_fwd`` in their decorators."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.cuda\.amp\.custom_(fwd|bwd).*")
        yield
