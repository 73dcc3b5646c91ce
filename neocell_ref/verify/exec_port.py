"""The exec protocol: verify a port that is a program, not a Python callable.

A port written in C, C++, CUDA or anything else is run once per golden case as a
separate process (``docs/porting.md``, section 8, specifies the protocol; this module is
its reference runner)::

    COMMAND {in} {out}

* ``{in}`` is a fresh folder holding one ``.npy`` per input, named like the golden
  members (``x.npy``, ``weight_a_0.npy``, ``weight_b_0.npy``, ..., ``grad_y.npy``),
  little-endian, C order, version 1.0 headers, and ``case.json`` (the operation,
  the case, the specs as written, the input names and the expected outputs with
  their shapes);
* ``{out}`` is an empty folder into which the port writes one ``.npy`` per expected
  output (``y.npy``, ``grad_x.npy``, ``grad_weight_a_0.npy``, ...).

The runner never trusts the port: it runs the command without a shell, in its own
process group, under a timeout after which the whole group is killed; it keeps only
the tail of stdout and stderr; and it reads every output only after checking that
it is a regular file whose size and ``.npy`` header (real floating dtype, exactly
the expected shape) are what the case expects. It never unpickles. Anything else
raises :class:`PortFailure`, whose message names the case and the problem and
carries the tail of the port's stderr.

The public API:

:func:`run_exec`
    One process run with explicit inputs and expected outputs (any operation).
:func:`run_golden_case`
    One golden case (manifest entry plus its arrays) -> ``{output name: array}``;
    what ``golden verify --exec`` calls, one run per case.
:class:`ExecPort`
    The NeoCell golden calling conventions (``forward``, ``backward``) on top of a
    command, for :func:`neocell_ref.verify.golden.run_and_compare` and the conformance kit.

Operations are named in ``case.json`` (``op``); :data:`CASE_FIELDS` says which
manifest fields each supported operation puts into ``case.json``. Version 1
supports ``"neocell"``; layers and the model are added by extending it (and
:func:`file_name` for member names that are not file names).
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from ..validation import MAX_NPY_HEADER, read_npy_header, real_number

__all__ = [
    "PROTOCOL_VERSION",
    "DEFAULT_TIMEOUT",
    "TAIL_BYTES",
    "CASE_FIELDS",
    "PortFailure",
    "ExecCommandError",
    "check_command",
    "file_name",
    "run_exec",
    "run_golden_case",
    "neocell_outputs",
    "ExecPort",
]

#: Version written into every ``case.json`` (``"protocol"``).
PROTOCOL_VERSION = 1
#: Seconds a port may run on one case before its process group is killed.
DEFAULT_TIMEOUT = 60.0
#: Bytes of stdout and of stderr kept (the tail) for the failure message.
TAIL_BYTES = 4096
#: Largest ``.npy`` header the runner reads from a port (a header is ~128 bytes): the
#: limit of every ``.npy`` header this package reads.
MAX_HEADER_BYTES = MAX_NPY_HEADER
#: Manifest fields copied into ``case.json`` per operation: ``{case.json key: manifest key}``.
CASE_FIELDS = {"neocell": {"specs": "specs_as_written"}}

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class PortFailure(Exception):
    """The port failed one case: bad exit, timeout, or a missing or unusable output.

    Attributes
    ----------
    case : str
        The case (golden name, or a label of the call).
    problem : str
        What went wrong, in one line.
    stderr_tail : str
        The last :data:`TAIL_BYTES` bytes of the port's stderr (decoded, may be empty).
    """

    def __init__(self, case, problem, stderr_tail=""):
        self.case, self.problem, self.stderr_tail = case, problem, stderr_tail
        tail = stderr_tail.rstrip()
        text = f"exec port failed on case {case!r}: {problem}"
        text += "\n--- tail of the port's stderr ---\n" + tail if tail else " (the port wrote nothing to stderr)"
        super().__init__(text)


class ExecCommandError(ValueError):
    """The command itself is unusable (empty, no ``{in}``/``{out}``, not found, cannot start).

    A property of the port, not of a case: the verifier reports it as an unusable
    argument (exit status 2), like a Python port that fails to import.
    """


# --------------------------------------------------------------------------------------
# command and names
# --------------------------------------------------------------------------------------
def check_command(command) -> list:
    """Split ``command`` (shlex, no shell) and check that it can be run.

    Parameters
    ----------
    command : str or sequence of str
        A string is split with :func:`shlex.split`; a sequence is taken as the
        argument vector. ``{in}`` and ``{out}`` must each appear (inside any argument).

    Returns
    -------
    list of str
        The argument vector, placeholders not yet substituted.

    Raises
    ------
    ExecCommandError
        If it is empty, lacks a placeholder, or its program is not an executable file.
    """
    if os.name != "posix":  # pragma: no cover - process groups and O_NOFOLLOW are POSIX
        raise ExecCommandError("the exec protocol needs a POSIX system (process groups, O_NOFOLLOW)")
    if isinstance(command, str):
        try:
            argv = shlex.split(command)
        except ValueError as exc:
            raise ExecCommandError(f"exec command {command!r} cannot be split: {exc}") from None
    elif isinstance(command, (list, tuple)) and all(isinstance(a, str) for a in command):
        argv = list(command)
    else:
        raise ExecCommandError(f"exec command must be a string or a list of strings, got {command!r}")
    if not argv:
        raise ExecCommandError("exec command is empty")
    joined = " ".join(argv)
    for placeholder in ("{in}", "{out}"):
        if placeholder not in joined:
            raise ExecCommandError(
                f"exec command {joined!r} has no {placeholder} placeholder: the port cannot know its folders"
            )
    program = argv[0]
    if "{in}" in program or "{out}" in program:
        raise ExecCommandError(f"exec command {joined!r}: the program itself cannot be a placeholder")
    found = (
        shutil.which(program)
        if os.sep not in program
        else (program if os.access(program, os.X_OK) and os.path.isfile(program) else None)
    )
    if found is None:
        raise ExecCommandError(f"exec command program {program!r} is not an executable file (or not on PATH)")
    return argv


def file_name(name: str) -> str:
    """File name of the golden member ``name`` in ``{in}`` or ``{out}``: ``name + ".npy"``.

    Names are identifiers (letters, digits, ``_``, not starting with a digit), so a
    member name can never reach outside the folder.

    Parameters
    ----------
    name : str
        A golden member name, such as ``"x"`` or ``"grad_weight_a_0"``.

    Returns
    -------
    str
        ``name + ".npy"``.

    Raises
    ------
    ValueError
        For any other name.
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"member name {name!r} is not an identifier; the exec protocol cannot name its file")
    return name + ".npy"


# --------------------------------------------------------------------------------------
# running the process
# --------------------------------------------------------------------------------------
def _tail_reader(stream, tail: bytearray):
    """Read ``stream`` to EOF, keeping only its last :data:`TAIL_BYTES` bytes in ``tail``."""
    try:
        while True:
            chunk = stream.read(65536)
            if not chunk:
                break
            tail.extend(chunk)
            if len(tail) > TAIL_BYTES:
                del tail[:-TAIL_BYTES]
    except (OSError, ValueError):  # pragma: no cover - stream closed under us
        pass


def _kill_group(pgid):
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _wait_unreaped(proc, timeout) -> bool:
    """Wait until ``proc`` exits, leaving it unreaped (a zombie); False on timeout."""
    if not hasattr(os, "waitid"):  # pragma: no cover - POSIX systems without waitid
        try:
            proc.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False
    deadline = time.monotonic() + timeout
    pause = 0.0005
    while True:
        try:
            if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return True
        except ChildProcessError:  # pragma: no cover - already reaped
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(pause, remaining))
        pause = min(2 * pause, 0.01)


def _run_process(argv, case, timeout):
    """Run ``argv`` in a new session; return ``(returncode, stdout tail, stderr tail)``.

    On a timeout the whole process group is killed and :class:`PortFailure` raised.
    The group is also killed after a normal exit, so that no process the port left
    behind keeps running (or keeps the pipes open).
    """
    try:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
        )
    except OSError as exc:
        raise ExecCommandError(f"exec command {argv[0]!r} could not be started: {exc}") from None
    tails = (bytearray(), bytearray())
    readers = [
        threading.Thread(target=_tail_reader, args=(s, t), daemon=True)
        for s, t in zip((proc.stdout, proc.stderr), tails)
    ]
    for r in readers:
        r.start()
    timed_out = False
    try:
        timed_out = not _wait_unreaped(proc, timeout)
    finally:
        # The group id is the leader's pid. Killing before the leader is reaped means
        # the id cannot have been reused by an unrelated process group.
        _kill_group(proc.pid)
        proc.wait()
        for r in readers:
            r.join(timeout=5.0)  # a process that left the group could hold a pipe open
        for s in (proc.stdout, proc.stderr):
            s.close()
    out, err = (bytes(t).decode("utf-8", errors="replace") for t in tails)
    if timed_out:
        raise PortFailure(case, f"timed out after {timeout:g} s; its process group was killed", err)
    return proc.returncode, out, err


# --------------------------------------------------------------------------------------
# reading one output, defensively
# --------------------------------------------------------------------------------------
def _open_out_dir(out_dir: Path, case: str, stderr: str) -> int:
    """A descriptor of ``{out}``, refusing a folder the port replaced by a link or a file."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0)
    try:
        return os.open(out_dir, flags)
    except OSError as exc:
        raise PortFailure(
            case, f"the output folder was removed or replaced by the port ({exc.strerror})", stderr
        ) from None


def _read_output(dir_fd: int, name: str, shape: tuple, case: str, stderr: str) -> np.ndarray:
    """Read ``{out}/name.npy`` after checking file type, size and header.

    Every check that can refuse the file runs before its data is read: the entry
    is examined without following links, opened with ``O_NOFOLLOW`` and
    ``O_NONBLOCK`` (a FIFO cannot block the runner), and its size is bounded by the
    expected shape before the header is parsed.
    """
    fname = file_name(name)

    def fail(problem):
        return PortFailure(case, f"output {fname}: {problem}", stderr)

    try:
        info = os.stat(fname, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        raise fail("missing (the port did not write it)") from None
    except OSError as exc:
        raise fail(f"cannot be examined: {exc}") from None
    if stat.S_ISLNK(info.st_mode):
        raise fail("is a symbolic link; outputs must be regular files")
    if not stat.S_ISREG(info.st_mode):
        raise fail("is not a regular file")
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(fname, flags, dir_fd=dir_fd)
    except OSError as exc:
        raise fail(f"cannot be opened: {exc}") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())  # the file actually opened
        if not stat.S_ISREG(info.st_mode):
            raise fail("is not a regular file")
        count = math.prod(shape)
        # No real floating type is wider than 16 bytes (long double).
        limit = 16 + MAX_HEADER_BYTES + 16 * count
        if info.st_size > limit:
            raise fail(f"is {info.st_size} bytes, more than any .npy of shape {shape} can be ({limit})")
        try:  # the header reader of the golden and weight files (header length checked first)
            (got_shape, fortran, dtype), header_length = read_npy_header(f)
        except ValueError as exc:
            raise fail(f"is not a readable .npy file: {exc}") from None
        if dtype.hasobject:
            raise fail(f"holds Python objects (dtype {dtype}); it would need unpickling, which is refused")
        if dtype.kind != "f" or dtype.fields is not None or dtype.subdtype is not None:
            raise fail(f"has dtype {dtype} ({dtype.str}); a real floating type is required")
        if tuple(got_shape) != tuple(shape):
            raise fail(f"has shape {tuple(got_shape)}, expected {tuple(shape)}")
        nbytes = count * dtype.itemsize
        if info.st_size != header_length + nbytes:
            raise fail(
                f"is {info.st_size} bytes, but its header ({dtype.str}, shape {tuple(shape)}) "
                f"needs exactly {header_length + nbytes}: truncated or trailing data"
            )
        data = f.read(nbytes)
    if len(data) != nbytes:
        raise fail("changed while being read")
    return np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C").copy()


# --------------------------------------------------------------------------------------
# one run
# --------------------------------------------------------------------------------------
def _write_input(path: Path, array: np.ndarray):
    """One input as a little-endian, C-order, version 1.0 ``.npy``."""
    array = np.asarray(array)
    if array.dtype.kind != "f":
        raise TypeError(f"exec input {path.name} must be a real floating array, got dtype {array.dtype}")
    array = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    with open(path, "xb") as f:
        np.lib.format.write_array(f, array, version=(1, 0), allow_pickle=False)


def check_timeout(timeout) -> float:
    """``timeout`` (seconds) as a float: a finite real number > 0, else a ValueError naming it."""
    return real_number(timeout, "timeout (seconds)", 0.0, low_open=True)


def run_exec(command, *, op, case, inputs, outputs, fields=None, timeout=DEFAULT_TIMEOUT, keep_dir=None):
    """Run the port once on one case and return its outputs, checked.

    Parameters
    ----------
    command : str or sequence of str
        The port, with ``{in}`` and ``{out}`` placeholders (see :func:`check_command`).
    op : str
        Operation name written into ``case.json``.
    case : str
        Case name written into ``case.json`` and used in failure messages.
    inputs : dict of str -> ndarray
        Input arrays (real floating), written as ``{in}/NAME.npy``.
    outputs : dict of str -> tuple of int
        Expected outputs and their exact shapes.
    fields : dict, optional
        Further ``case.json`` keys (for NeoCell: ``specs``); JSON-serialisable.
    timeout : float
        Seconds (finite, > 0) before the port's process group is killed.
    keep_dir : path, optional
        Create the case folder inside this existing folder and keep it (to debug a
        port); by default a temporary folder is used and removed.

    Returns
    -------
    dict of str -> ndarray
        One array per expected output, in the dtype the port wrote (real floating).

    Raises
    ------
    PortFailure
        Non-zero exit, timeout, or a missing, malformed, pickled, non-real-floating or
        wrongly-shaped output; the message names the case and carries the stderr tail.
    ExecCommandError
        If the command cannot be run at all.
    ValueError, TypeError
        On bad arguments (names, shapes, timeout).
    """
    argv = check_command(command)
    timeout = check_timeout(timeout)
    in_names = [file_name(n) for n in inputs]
    shapes = {}
    for name, shape in outputs.items():
        file_name(name)
        shape = tuple(shape)
        if not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 0 for s in shape):
            raise ValueError(f"expected shape of output {name!r} must be non-negative integers, got {shape!r}")
        shapes[name] = tuple(int(s) for s in shape)
    if not shapes:
        raise ValueError("a case must expect at least one output")
    fields = dict(fields or {})
    reserved = {"protocol", "op", "case", "dtype", "inputs", "outputs"} & set(fields)
    if reserved:
        raise ValueError(f"case.json fields {sorted(reserved)} are written by the runner itself")
    dtypes = sorted({np.asarray(a).dtype.name for a in inputs.values()})
    meta = {
        "protocol": PROTOCOL_VERSION,
        "op": op,
        "case": case,
        "dtype": dtypes[0] if len(dtypes) == 1 else "mixed",
        **fields,
        "inputs": list(inputs),
        "outputs": {name: list(shape) for name, shape in shapes.items()},
    }
    root = Path(tempfile.mkdtemp(prefix="neocell-exec-", dir=keep_dir))
    try:
        in_dir, out_dir = root / "in", root / "out"
        in_dir.mkdir()
        out_dir.mkdir()
        for name, fname in zip(inputs, in_names):
            _write_input(in_dir / fname, inputs[name])
        (in_dir / "case.json").write_text(json.dumps(meta, indent=1) + "\n")
        folders = {"{in}": str(in_dir), "{out}": str(out_dir)}
        args = [re.sub(r"\{in\}|\{out\}", lambda m: folders[m.group()], a) for a in argv]
        code, _, err = _run_process(args, case, float(timeout))
        if code != 0:
            how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
            raise PortFailure(case, f"the port {how}", err)
        dir_fd = _open_out_dir(out_dir, case, err)
        try:
            return {name: _read_output(dir_fd, name, shape, case, err) for name, shape in shapes.items()}
        finally:
            os.close(dir_fd)
    finally:
        if keep_dir is None:
            for folder in (root / "in", root / "out"):  # a port may have made them unwritable
                try:
                    if not folder.is_symlink():
                        os.chmod(folder, 0o700)
                except OSError:
                    pass
            shutil.rmtree(root, ignore_errors=True)


def _is_forward_output(name):
    """Forward outputs are the expected arrays that are not gradients (``y``, logits)."""
    return not name.startswith("grad")


def run_golden_case(command, op, name, meta, arrays, *, forward_only=False, timeout=DEFAULT_TIMEOUT, keep_dir=None):
    """Run the port on one golden case: every output in one process run.

    Parameters
    ----------
    command : str or sequence of str
    op : str
        An operation in :data:`CASE_FIELDS`.
    name : str
        Case name.
    meta : dict
        The case's manifest entry (or the ``meta`` of ``OPERATIONS[op].make`` with
        ``tolerances`` added): ``inputs`` (input names), ``tolerances`` (one entry per
        expected output) and the fields :data:`CASE_FIELDS` names.
    arrays : dict
        The case's arrays (inputs and expected outputs; expected shapes are read from them).
    forward_only : bool
        Expect only the forward outputs (names not starting with ``grad``) and leave
        the gradient seeds (``grad_y``) out of ``{in}``.
    timeout, keep_dir
        As in :func:`run_exec`.

    Returns
    -------
    dict of str -> ndarray
        The port's outputs, keyed like the expected arrays, ready to compare.
    """
    if op not in CASE_FIELDS:
        raise ValueError(f"the exec protocol supports operations {sorted(CASE_FIELDS)}, not {op!r}")
    expected = [k for k in meta["tolerances"] if not forward_only or _is_forward_output(k)]
    input_names = [k for k in meta["inputs"] if not (forward_only and k.startswith("grad"))]
    fields = {key: meta[source] for key, source in CASE_FIELDS[op].items()}
    return run_exec(
        command,
        op=op,
        case=name,
        inputs={k: arrays[k] for k in input_names},
        outputs={k: np.shape(arrays[k]) for k in expected},
        fields=fields,
        timeout=timeout,
        keep_dir=keep_dir,
    )


# --------------------------------------------------------------------------------------
# NeoCell calling conventions on top of a command
# --------------------------------------------------------------------------------------
def neocell_outputs(specs, x_shape, forward_only=False) -> dict:
    """Names and shapes of the outputs a NeoCell case expects.

    Parameters
    ----------
    specs : list of dict or GroupSpec
        One entry per channel group, in any official dict form (SPEC section 2).
    x_shape : tuple of int
        Shape ``(N, C, H, W)`` of the input ``x``. ``C`` is copied into the output
        shapes, not checked against the groups' channels.
    forward_only : bool, default False
        Only ``y`` (the forward-only mode of the protocol).

    Returns
    -------
    dict of str -> tuple
        ``y`` (N, C, H_out, W_out); unless ``forward_only`` also ``grad_x`` (N, C, H, W),
        ``grad_weight_a_G`` and ``grad_weight_b_G`` shaped like the group's weights.

    Raises
    ------
    TypeError, ValueError
        Invalid ``specs`` (:func:`neocell_ref.spec.parse_specs`); ``x_shape`` not four
        values, or an ``H x W`` the groups do not accept (SPEC section 4,
        :func:`neocell_ref.spec.check_input_size`).
    """
    from ..spec import check_input_size, parse_specs

    groups = parse_specs(specs)
    n, c, h, w = x_shape
    h_out, w_out = check_input_size(groups, h, w)
    shapes = {"y": (n, c, h_out, w_out)}
    if not forward_only:
        shapes["grad_x"] = tuple(x_shape)
        for g, spec in enumerate(groups):
            shapes[f"grad_weight_a_{g}"] = spec.shape_a
            shapes[f"grad_weight_b_{g}"] = spec.shape_b
    return shapes


class ExecPort:
    """A command that speaks the exec protocol, as NeoCell ``forward``/``backward`` callables.

    ``forward(x, weights_a, weights_b, specs) -> y`` runs the command once in
    forward-only mode; ``backward(grad_y, x, weights_a, weights_b, specs) -> (grad_x,
    grads_a, grads_b)`` runs it once in full mode (which also computes ``y``; that
    ``y`` is not returned). A golden case checked through both therefore costs two
    runs; :func:`run_golden_case` checks every output in one. Runs are not cached:
    the callables are pure functions of their arguments, like any port's.

    Parameters
    ----------
    command : str or sequence of str
        Checked at construction (:class:`ExecCommandError`).
    timeout : float
        Per run, seconds.

    Attributes
    ----------
    runs : int
        Number of process runs so far (each failure names its run).
    """

    def __init__(self, command, *, timeout=DEFAULT_TIMEOUT):
        check_command(command)
        self.command, self.timeout, self.runs = command, timeout, 0

    def _run(self, mode, arrays, specs, forward_only):
        self.runs += 1
        specs = [dict(s) for s in specs]
        shapes = neocell_outputs(specs, np.shape(arrays["x"]), forward_only)
        return run_exec(
            self.command,
            op="neocell",
            case=f"{mode} run {self.runs}",
            inputs=arrays,
            outputs=shapes,
            fields={"specs": specs},
            timeout=self.timeout,
        )

    @staticmethod
    def _inputs(x, weights_a, weights_b):
        arrays = {"x": np.asarray(x)}
        arrays.update({f"weight_a_{g}": np.asarray(w) for g, w in enumerate(weights_a)})
        arrays.update({f"weight_b_{g}": np.asarray(w) for g, w in enumerate(weights_b)})
        return arrays

    def forward(self, x, weights_a, weights_b, specs):
        """``y``, shape (N, C, H_out, W_out), from one forward-only run."""
        return self._run("forward", self._inputs(x, weights_a, weights_b), specs, True)["y"]

    def backward(self, grad_y, x, weights_a, weights_b, specs):
        """``(grad_x, grads_a, grads_b)`` from one full run."""
        arrays = self._inputs(x, weights_a, weights_b)
        arrays["grad_y"] = np.asarray(grad_y)
        got = self._run("backward", arrays, specs, False)
        groups = len(weights_a)
        return (
            got["grad_x"],
            [got[f"grad_weight_a_{g}"] for g in range(groups)],
            [got[f"grad_weight_b_{g}"] for g in range(groups)],
        )
