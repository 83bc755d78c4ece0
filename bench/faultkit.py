"""What the fault-injection bench (`fault_injection.py`) and its fast tests (`tests/test_fault_injection.py`) share.

A tiny corpus, real `seq2seq` processes, the faults themselves (SIGKILL at chosen moments, a disk that fills
at one file, read-only folders, two runs at once) and the one check of what they leave behind: every file
with a final name loads or reads whole, and once a command has ended by itself no temporary file and no
lock is left. Each fault is a `Case`; its `problems` are empty when seq2seq survived it.

Linux only: processes are followed through /proc, and the full disk needs /proc/self/fd to name the file
behind a descriptor. Run as root, the read-only cases give up, in the child, the capabilities that let root
ignore permissions (prctl PR_CAPBSET_DROP), so that root sees a read-only folder as a user does.

`python faultkit.py PATTERN POINT SPARE MARKER ARGS...` runs `seq2seq ARGS` on a disk that fills at the
files named like PATTERN (see `DiskFault`), noting each file it failed in MARKER.
"""

from __future__ import annotations

import builtins
import ctypes
import errno
import fnmatch
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, NamedTuple

from seq2seq import checkpoint
from seq2seq.config import resolve
from seq2seq.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parent.parent
KIT = Path(__file__).resolve()
TEMP_NAME = re.compile(r"\.(?P<target>.+?)\.(?:\d+\.)?[a-z0-9_]{8}\.tmp")  # atomic_write's: .NAME.PID.XXXXXXXX.tmp
LOCK = ".lock"
PNG_START, PNG_END = b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"
NO_SPACE = os.strerror(errno.ENOSPC)
WORDS = "red sun sea tree road rain stone house bird wind hill field".split()
GRACE_S = 10.0    # how long a killed command's worker processes get to follow it
PATIENCE_S = 180  # the longest any one command may take here
PART_WAY = 32     # characters a file gets before the disk fills "part-way" (smaller files never see the fault)


# --- the corpus and the commands ---------------------------------------------------------------------


@dataclass(frozen=True)
class Corpus:
    """A word-reversal task (sun sea -> NUS AES): enough lines that the tokenizer takes a moment to train, short
    enough that a run validates and saves at every step."""

    folder: Path
    valid_lines: int

    def path(self, name: str) -> str:
        return str(self.folder / name)


def write_corpus(folder: Path, *, train: int = 2000, valid: int = 5, to_translate: int = 3000, seed: int = 0) -> Corpus:
    """train.src/.tgt, valid.src/.tgt, input.txt (lines to translate) and few.txt (its first 20) in `folder`."""
    rng = random.Random(seed)

    def sentences(count: int) -> list[str]:
        return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 6))) for _ in range(count)]

    folder.mkdir(parents=True, exist_ok=True)
    for name, count in (("train", train), ("valid", valid)):
        sources = sentences(count)
        _write_lines(folder / f"{name}.src", sources)
        _write_lines(folder / f"{name}.tgt", [" ".join(word[::-1].upper() for word in line.split()) for line in sources])
    to_translate_lines = sentences(to_translate)
    _write_lines(folder / "input.txt", to_translate_lines)
    _write_lines(folder / "few.txt", to_translate_lines[:20])
    return Corpus(folder, valid)


def _write_lines(path: Path, lines: Sequence[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


class Outcome(NamedTuple):
    """How a command ended: its exit code, its stderr, and the files a full disk failed (see `DiskFault`)."""

    returncode: int
    stderr: str
    hits: list[str]


class Workspace:
    """Where the cases run: a corpus, a tokenizer cache, fresh folders, and the environment of every seq2seq
    process (this checkout's code, CPU only, one thread)."""

    def __init__(self, root: Path, *, seed: int = 0) -> None:
        self.root = root
        self.corpus = write_corpus(root / "data", seed=seed)
        self.cache = root / "cache"
        self._folders = 0

    def fresh(self, label: str) -> Path:
        """A new path under the workspace; nothing is there yet."""
        self._folders += 1
        return self.root / f"{self._folders:03d}-{label}"

    def environment(self) -> dict[str, str]:
        path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        return {**os.environ, "PYTHONPATH": path, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1",
                "SEQ2SEQ_CACHE_DIR": str(self.cache), "NO_COLOR": "1"}

    def train_args(self, out: Path, *extra: str) -> list[str]:
        """A run that validates and saves at every step, keeps the 2 best steps and picks best.pt by loss (which
        improves at most steps, so best.pt and step-N.pt are rewritten often)."""
        corpus = self.corpus
        return ["train", "--source", corpus.path("train.src"), "--target", corpus.path("train.tgt"),
                "--valid-source", corpus.path("valid.src"), "--valid-target", corpus.path("valid.tgt"),
                "--output", str(out), "--vocab-size", "60", "--emb-dim", "8", "--hidden-dim", "16",
                "--batch-tokens", "300", "--valid-every", "1", "--select-metric", "loss",
                "--set", "train.keep_best=2", "--set", "train.threads=1", *extra]

    def translate_args(self, out: Path, *extra: str, lines: str = "few.txt") -> list[str]:
        return ["translate", "-m", str(self.model), "-i", self.corpus.path(lines), "-o", str(out), "-q", *extra]

    def run(self, args: Sequence[str], *, unprivileged: bool = False) -> Outcome:
        """`seq2seq ARGS` to its end; `unprivileged`: without root's power to ignore permissions."""
        done = subprocess.run([sys.executable, "-m", "seq2seq", *args], env=self.environment(), capture_output=True,
                              text=True, timeout=PATIENCE_S, preexec_fn=_without_overrides if unprivileged else None)
        return Outcome(done.returncode, done.stderr, [])

    def run_on_full_disk(self, args: Sequence[str], fault: DiskFault | None) -> Outcome:
        """`seq2seq ARGS` on a disk that fills as `fault` says (a plain run when None)."""
        if fault is None:
            return self.run(args)
        marker = self.fresh("hits")
        command = [sys.executable, str(KIT), fault.pattern, fault.point, str(fault.spare), str(marker), *args]
        done = subprocess.run(command, env=self.environment(), capture_output=True, text=True, timeout=PATIENCE_S)
        hits = marker.read_text(encoding="utf-8").splitlines() if marker.exists() else []
        return Outcome(done.returncode, done.stderr, hits)

    def start(self, args: Sequence[str]) -> Running:
        return Running([sys.executable, "-m", "seq2seq", *args], self.environment())

    @cached_property
    def trained(self) -> Path:
        """A finished run folder (6 steps): best.pt and last.pt to translate with, step-N.pt to average, metrics to plot."""
        out = self.fresh("trained")
        done = self.run(self.train_args(out, "--max-steps", "6", "-q"))
        if done.returncode:
            raise RuntimeError(f"the reference training run failed (exit {done.returncode}): {done.stderr[-2000:]}")
        return out

    @property
    def model(self) -> Path:
        return self.trained / "best.pt"

    @cached_property
    def translation(self) -> str:
        """input.txt translated whole: what every translate of it must leave once it ends."""
        out = self.fresh("translation") / "out.txt"
        out.parent.mkdir()
        done = self.run(self.translate_args(out, lines="input.txt"))
        if done.returncode:
            raise RuntimeError(f"the reference translation failed (exit {done.returncode}): {done.stderr[-2000:]}")
        return out.read_text(encoding="utf-8")


CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER = 1, 2, 3
PR_CAPBSET_DROP = 24


def _without_overrides() -> None:
    """In a child about to exec: drop the capabilities with which root ignores permissions. The bounding set is
    what root's next program gets, so the exec'd seq2seq meets a read-only folder as any user does."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER):
        if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


class Running:
    """A seq2seq command in a session of its own (which its worker processes share), its stderr read as it comes."""

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.lines: list[str] = []
        self._ended = False
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._ended = True
            self._changed.notify_all()

    def wait_for_line(self, fragment: str) -> bool:
        """Wait until stderr shows `fragment` (True) or the command ends without it (False)."""
        def shown() -> bool:
            return any(fragment in line for line in self.lines)

        with self._changed:
            self._changed.wait_for(lambda: self._ended or shown(), PATIENCE_S)
            return shown()

    def wait_for_file(self, folder: Path, matches: Callable[[str], bool]) -> bool:
        """Poll `folder` (every millisecond: a small save takes a few) until a file `matches`, or the command ends."""
        deadline = time.monotonic() + PATIENCE_S
        while self.process.poll() is None and time.monotonic() < deadline:
            if folder.is_dir() and any(matches(name) for name in os.listdir(folder)):
                return True
            time.sleep(0.001)
        return False

    def kill(self) -> tuple[int, list[str]]:
        """SIGKILL the command; its exit code (-9 unless it had ended by itself) and, as problems, any process of
        its session still running `GRACE_S` later (a worker that did not follow it)."""
        self.process.kill()
        self.process.wait()
        self._reader.join()
        left = _session_survivors(self.process.pid)
        outlived = [f"processes {left} of the killed command still ran {GRACE_S:.0f} s later"] if left else []
        return self.process.returncode, outlived

    def stop(self) -> int:
        """SIGTERM the command (a clean stop for train) and wait for its exit code."""
        self.process.terminate()
        return self.wait()

    def wait(self) -> int:
        code = self.process.wait(timeout=PATIENCE_S)
        self._reader.join()
        return code

    def tail(self) -> str:
        return self.lines[-1] if self.lines else "(nothing on stderr)"

    def __enter__(self) -> Running:
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Never leave a command running behind a case that failed half-way (a train of 100,000 steps)."""
        if self.process.poll() is None:
            self.process.kill()
            self.wait()


def _session_survivors(session: int) -> list[int]:
    """The live processes of `session` once they had `GRACE_S` to end."""
    deadline = time.monotonic() + GRACE_S
    while (members := _session_members(session)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return members


def _session_members(session: int) -> list[int]:
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _ppid, _group, sid = stat.read_text().rsplit(")", 1)[1].split()[:4]
        except (OSError, ValueError):
            continue  # it ended while being read
        if int(sid) == session and state not in "ZX":
            members.append(int(stat.parent.name))
    return members


# --- the check: every file whole, nothing temporary left ---------------------------------------------


def target_of(name: str) -> str:
    """The final name a file stands for: a temporary file's target, or its own name."""
    temporary = TEMP_NAME.fullmatch(name)
    return temporary["target"] if temporary else name


def problems_in(folder: Path, *, valid_lines: int | None = None, ended: bool = True) -> list[str]:
    """What is wrong with the files under `folder`, one line each (none when all is well).

    Every file with a final name must load or read whole: checkpoints through `checkpoint.load` (which checks
    the weights' CRC), config.toml and metrics.jsonl parsed, text as UTF-8 ending in a newline (*.valid.txt with
    one line per validation pair), tokenizer models through SentencePiece, pictures from PNG signature to IEND.
    `ended`: the last command ended by itself, so it left no temporary file and no lock; after a SIGKILL
    (`ended=False`) both may stay, since the killed process had no chance to remove them.
    """
    found = []
    for path in sorted(folder.rglob("*")) if folder.is_dir() else []:
        if path.is_dir():
            continue
        where = path.relative_to(folder)
        if TEMP_NAME.fullmatch(path.name) or path.name == LOCK:
            if ended:
                found.append(f"{where}: left behind by a command that ended by itself")
            if path.name == LOCK and not re.fullmatch(r"(\d+\n)?", path.read_text(encoding="ascii", errors="replace")):
                found.append(f"{where}: holds {path.read_bytes()[:40]!r}, not a pid")
            continue
        try:
            _check_whole(path, valid_lines)
        except Exception as error:  # whatever a broken file makes its reader raise is the finding
            found.append(f"{where}: {type(error).__name__}: {error}")
    return found


def _check_whole(path: Path, valid_lines: int | None) -> None:
    name = path.name
    if name.endswith(".pt"):
        checkpoint.load(path)
    elif name == "config.toml":
        resolve(path)
    elif name.endswith(".model"):
        Tokenizer(path.read_bytes())
    elif name.endswith(".png"):
        data = path.read_bytes()
        if not (data.startswith(PNG_START) and data.endswith(PNG_END)):
            raise ValueError(f"not a whole PNG ({len(data)} bytes)")
    elif name.endswith((".jsonl", ".txt")):
        lines = _whole_lines(path)
        if name.endswith(".jsonl"):
            [json.loads(line) for line in lines]
        if name.endswith(".valid.txt") and valid_lines is not None and len(lines) != valid_lines:
            raise ValueError(f"{len(lines)} lines, not one for each of the {valid_lines} validation pairs")
    else:
        raise ValueError("not a file seq2seq writes")


def _whole_lines(path: Path) -> list[str]:
    text = path.read_bytes().decode("utf-8")
    if text and not text.endswith("\n"):
        raise ValueError("its last line is cut short (no newline at the end)")
    return text.splitlines()


def last_step(out: Path) -> int | None:
    """last.pt's step, or None when there is no (loadable) last.pt."""
    try:
        return checkpoint.load(out / "last.pt").step
    except Exception:  # problems_in reports why
        return None


@dataclass
class Case:
    """One fault and what it left. `problems` is empty when seq2seq survived it; `reached` is False when the fault
    never fired (a file too small to fill part-way, a file never fsynced): such a case is not counted."""

    category: str
    name: str
    problems: list[str] = field(default_factory=list)
    detail: str = ""
    reached: bool = True

    @property
    def survived(self) -> bool:
        return not self.problems


# --- SIGKILL -------------------------------------------------------------------------------------------


TRAIN_MOMENTS = ("during tokenizer training", "during start-up", "during a save", "after a validation", "at a random time")


def kill_training(space: Workspace, rng: random.Random, moments: Sequence[str]) -> list[Case]:
    """SIGKILL `train` once at each of `moments` (of TRAIN_MOMENTS), all in one run folder but for a new one at
    each "during tokenizer training" (only a new run trains its tokenizer; the later ones resume). After each kill
    the folder is checked, then the run goes on by one step as a user would: --resume, or a plain rerun when no
    checkpoint was saved."""
    cases, out = [], space.fresh("train-kills")
    for number, moment in enumerate(moments):
        if moment == TRAIN_MOMENTS[0] and number:
            out = space.fresh("train-kills")
        cases.append(_kill_train_once(space, out, moment, rng))
    return cases


def _kill_train_once(space: Workspace, out: Path, moment: str, rng: random.Random) -> Case:
    before = last_step(out)
    resume = ["--resume"] if before is not None else []
    with space.start(space.train_args(out, "--max-steps", "100000", "--no-cache", *resume)) as run:
        reached = _reach(moment, run, out, rng)
        code, problems = run.kill()
    if not reached or code != -signal.SIGKILL:
        problems.append(f"train ended (exit {code}) before the kill: {run.tail()}")
    problems += problems_in(out, valid_lines=space.corpus.valid_lines, ended=False)
    after = last_step(out)
    if before is not None and (after or 0) < before:
        problems.append(f"last.pt went back from step {before} to {after}")
    left = sorted(path.name for path in out.glob(".*.tmp"))
    detail = f"step {after or 0} held; " + (f"the kill left {', '.join(left)}" if left else "no temporary file at the kill")
    return Case("train killed", moment, problems + _go_on(space, out, after), detail)


def _reach(moment: str, run: Running, folder: Path, rng: random.Random) -> bool:
    """Wait for `moment` (of TRAIN_MOMENTS or TRANSLATE_MOMENTS) of `run`, writing into `folder`; False if it ended first."""
    if moment == "during tokenizer training":
        return run.wait_for_line("preparing the tokenizer")
    if moment == "during a save":  # of a checkpoint: its temporary file is there
        return run.wait_for_file(folder, lambda name: name != target_of(name) and target_of(name).endswith(".pt"))
    if moment == "after a validation" and not run.wait_for_line("validation at step"):
        return False
    if moment == "while writing" and not run.wait_for_file(folder, TEMP_NAME.fullmatch):
        return False
    longest = {"during start-up": 2.0, "after a validation": 0.3, "while writing": 1.0, "at a random time": 6.0}[moment]
    time.sleep(rng.uniform(0.0, longest))
    return True


def _go_on(space: Workspace, out: Path, step: int | None) -> list[str]:
    """Train one more step into `out` after a fault: --resume when last.pt was saved, else a plain rerun."""
    resume = ["--resume"] if step is not None else []
    done = space.run(space.train_args(out, "--max-steps", str((step or 0) + 1), "--no-cache", "-q", *resume))
    if done.returncode:
        return [f"the next run ({'--resume' if resume else 'a plain rerun'}) failed (exit {done.returncode}): "
                f"{done.stderr.strip()[-500:]}"]
    problems = problems_in(out, valid_lines=space.corpus.valid_lines)
    if last_step(out) != (step or 0) + 1:
        problems.append(f"the next run left last.pt at step {last_step(out)}, not {(step or 0) + 1}")
    return problems


TRANSLATE_MOMENTS = ("during start-up", "while writing", "at a random time")


def kill_translation(space: Workspace, rng: random.Random, moments: Sequence[str]) -> list[Case]:
    """SIGKILL `translate -i input.txt -o out.txt` once at each of `moments` (of TRANSLATE_MOMENTS), out.txt
    holding an earlier translation before the first kill and every other one, and absent before the rest."""
    folder = space.fresh("translate-kills")
    folder.mkdir()
    return [_kill_translate_once(space, folder / "out.txt", moment, rng, earlier=number % 2 == 0)
            for number, moment in enumerate(moments)]


def _kill_translate_once(space: Workspace, out: Path, moment: str, rng: random.Random, *, earlier: bool) -> Case:
    """out.txt must be left absent, earlier or whole new; no worker may outlive the kill; a rerun must leave the
    whole translation and no temporary file (it removes what the kill left)."""
    expected, before = space.translation, f"an earlier translation before a kill {moment}\n" if earlier else None
    out.unlink(missing_ok=True)
    if before:
        out.write_text(before, encoding="utf-8")
    with space.start(space.translate_args(out, lines="input.txt")) as run:
        _reach(moment, run, out.parent, rng)
        code, problems = run.kill()
    left = sorted(path.name for path in out.parent.glob(".*.tmp"))
    now = out.read_text(encoding="utf-8") if out.exists() else None
    if now not in (before, expected):
        problems.append(f"out.txt holds {len(now or '')} characters: neither the earlier file nor the whole translation")
    problems += problems_in(out.parent, ended=False)
    done = space.run(space.translate_args(out, lines="input.txt"))
    if done.returncode or not out.exists() or out.read_text(encoding="utf-8") != expected:
        problems.append(f"the rerun did not leave the whole translation (exit {done.returncode}): "
                        f"{done.stderr.strip()[-300:]}")
    problems += [f"after the rerun: {problem}" for problem in problems_in(out.parent)]
    state = "absent" if now is None else "the earlier one" if now == before else "the whole new one"
    detail = (f"{'finished before the kill' if code == 0 else 'killed'}; out.txt {state}; "
              + (f"the kill left {', '.join(left)}" if left else "no temporary file at the kill"))
    return Case("translate killed", moment, problems, detail)


# --- a full disk ---------------------------------------------------------------------------------------


DISK_POINTS = ("at the first byte", "part-way", "at fsync")


@dataclass
class DiskFault:
    """A disk that fills at the files finally named like `pattern` (a glob): at their first byte, `PART_WAY`
    characters in, or at their fsync (where delayed allocation reports it). The first `spare` such files still
    find room, so that a rewritten file has a previous version to keep. Once full, the disk stays full: every
    later write fails at its first byte. `hits` names the files that found no room, the aimed-at one first."""

    pattern: str
    point: str
    spare: int = 0
    hits: list[str] = field(default_factory=list)
    marker: Path | None = None  # also noted here, one name a line (a child process tells its parent)
    _seen: int = 0
    _fsync_fails: dict[int, str] = field(default_factory=dict)

    def hit(self, name: str) -> None:
        self.hits.append(name)
        if self.marker:
            fd = os.open(self.marker, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            os.write(fd, f"{name}\n".encode())
            os.close(fd)

    def opened(self, file: Any, name: str) -> Any:
        """`file`, just opened for writing as `name`, as this disk lets it be written."""
        if self.hits:
            return _Filling(file, 0, lambda: self.hit(name))
        if not fnmatch.fnmatchcase(name, self.pattern):
            return file
        self._seen += 1
        if self._seen <= self.spare:
            return file
        if self.point == "at fsync":
            self._fsync_fails[file.fileno()] = name
            return file
        return _Filling(file, 0 if self.point == "at the first byte" else PART_WAY, lambda: self.hit(name))

    def fsync_fails(self, fd: int) -> bool:
        name = self._fsync_fails.pop(fd, None)
        if name is not None:
            self.hit(name)
        return name is not None


class _Filling:
    """A file whose writes fail with ENOSPC once `room` characters are in, after writing what fits, as a write to a
    filling disk does."""

    def __init__(self, file: Any, room: int, on_full: Callable[[], None]) -> None:
        self._file, self._room, self._on_full = file, room, on_full

    def write(self, data: Any) -> int:
        if len(data) > self._room:
            self._file.write(data[: self._room])
            self._room = 0
            self._on_full()
            raise OSError(errno.ENOSPC, NO_SPACE)
        self._room -= len(data)
        return self._file.write(data)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)

    def __enter__(self) -> _Filling:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._file.close()


@contextmanager
def filled_disk(fault: DiskFault) -> Iterator[DiskFault]:
    """Let every file this process opens for writing meet `fault`: those opened with `open` (the run's lock) and
    with `os.fdopen` (atomic_write's temporary files, known by the final name they stand for)."""
    real_open, real_fdopen, real_fsync = builtins.open, os.fdopen, os.fsync

    def writing(mode: str) -> bool:
        return any(flag in mode for flag in "wax+")

    def open_(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        opened = real_open(file, mode, *args, **kwargs)
        named = isinstance(file, (str, os.PathLike)) and writing(mode)
        return fault.opened(opened, Path(file).name) if named else opened

    def fdopen(fd: int, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        name = target_of(Path(os.readlink(f"/proc/self/fd/{fd}")).name) if writing(mode) else ""
        opened = real_fdopen(fd, mode, *args, **kwargs)
        return fault.opened(opened, name) if name else opened

    def fsync(fd: int) -> None:
        if fault.fsync_fails(fd):
            raise OSError(errno.ENOSPC, NO_SPACE)
        real_fsync(fd)

    builtins.open, os.fdopen, os.fsync = open_, fdopen, fsync
    try:
        yield fault
    finally:
        builtins.open, os.fdopen, os.fsync = real_open, real_fdopen, real_fsync


class Written(NamedTuple):
    """A file a seq2seq command writes, as a full-disk case: its name (a glob), the command, and how many of its
    writes find room before the disk fills."""

    pattern: str
    command: str
    spare: int = 0


WRITTEN = (
    Written(LOCK, "train"), Written("config.toml", "train"), Written("*.model", "train"),  # *.model: tokenizer cache
    Written("last.valid.txt", "train", 1), Written("best.valid.txt", "train", 1), Written("best.pt", "train", 1),
    Written("step-*.pt", "train", 1), Written("last.pt", "train", 1), Written("metrics.jsonl", "train", 1),
    Written("out.txt", "translate"), Written("line-*.png", "translate --attention-plot", 1),
    Written("averaged.pt", "average"), Written("curves.png", "plot"),
)
EARLIER = "an earlier translation\n"

Runner = Callable[[Sequence[str], "DiskFault | None"], Outcome]


def full_disk_case(space: Workspace, written: Written, point: str, run: Runner) -> Case:
    """Run `written`'s command, through `run`, on a disk that fills at that file, then again on a disk with room.

    The first must end in one line, `error: ...` naming the file and the full disk (exit 1), never a traceback;
    every file left must be whole (a rewritten file its previous version), with no temporary file and no lock;
    the second must succeed, as a user's rerun (--resume for train) after freeing space would."""
    case = space.fresh("full-disk")
    case.mkdir()
    args = _disk_command(space, written.command, case)
    fault = DiskFault(written.pattern, point, written.spare)
    outcome = run(args, fault)
    name = f"{written.pattern} ({written.command}) {point}"
    if not outcome.hits:
        return Case("full disk", name, reached=False, detail=f"the file never met the fault (exit {outcome.returncode})")
    problems = _one_line_error(outcome, 1, str(case), NO_SPACE)
    problems += problems_in(case, valid_lines=space.corpus.valid_lines)
    if written.spare and not list(case.rglob(written.pattern)):
        problems.append(f"{written.pattern}: the version written before the disk filled is gone")
    if written.command == "translate" and (case / "out.txt").read_text(encoding="utf-8") != EARLIER:
        problems.append("out.txt: the earlier translation was not kept")
    resume = ["--resume"] if (case / "run" / "last.pt").exists() else []
    again = run([*args, *resume], None)
    if again.returncode:
        problems.append(f"the rerun with room failed (exit {again.returncode}): {again.stderr.strip()[-300:]}")
    problems += [f"after the rerun: {problem}" for problem in problems_in(case, valid_lines=space.corpus.valid_lines)]
    return Case("full disk", name, problems, detail=f"no room for {', '.join(outcome.hits)}")


def _disk_command(space: Workspace, command: str, case: Path) -> list[str]:
    """The arguments of `command` writing into the folder `case` (an earlier out.txt there for translate)."""
    if command == "train":
        return space.train_args(case / "run", "--max-steps", "4", "--cache-dir", str(case / "cache"), "-q")
    if command.startswith("translate"):
        (case / "out.txt").write_text(EARLIER, encoding="utf-8")
        pictures = ["--attention-plot", str(case / "pictures")] if "attention" in command else []
        return space.translate_args(case / "out.txt", *pictures)
    if command == "average":
        return ["average", *map(str, sorted(space.trained.glob("step-*.pt"))), "-o", str(case / "averaged.pt"), "-q"]
    return ["plot", str(space.trained), "-o", str(case / "curves.png")]


def _one_line_error(outcome: Outcome, code: int, *fragments: str) -> list[str]:
    """Problems unless the command exited with `code` and said exactly one `error: ...` line holding `fragments`."""
    lines = outcome.stderr.strip().splitlines()
    if outcome.returncode == code and len(lines) == 1 and lines[0].startswith("error: ") and all(
            fragment in lines[0] for fragment in fragments):
        return []
    return [f"expected exit {code} and one error line with {list(fragments)}; got exit {outcome.returncode} and "
            f"{len(lines)} lines: {' | '.join(lines[-3:])[:600]}"]


# --- read-only folders ---------------------------------------------------------------------------------


READ_ONLY = ("train into a read-only empty folder", "train --resume in a read-only run folder",
             "train into a new folder inside a read-only one", "translate -o over a file in a read-only folder",
             "translate -o a new file in a read-only folder", "average -o into a read-only folder",
             "train with a read-only tokenizer cache")


def permissions_ignored(space: Workspace) -> str:
    """Why seq2seq here would write into a read-only folder anyway ("" when it would not): root, unless it can give
    up the capabilities that let it."""
    probe = space.fresh("probe")
    probe.mkdir(mode=0o555)
    try:
        subprocess.run([sys.executable, "-c", "import sys; open(sys.argv[1], 'w')", str(probe / "file")],
                       capture_output=True, preexec_fn=_without_overrides, check=True)
    except subprocess.CalledProcessError:
        return ""  # refused: permissions hold
    except subprocess.SubprocessError:
        return "running as root, which could not give up CAP_DAC_OVERRIDE here (prctl refused)"
    finally:
        probe.chmod(0o755)
    return "running as root, which writes into read-only folders here even without CAP_DAC_OVERRIDE"


def read_only_case(space: Workspace, name: str) -> Case:
    """Run one of READ_ONLY: a folder is made read-only (0555), the command must refuse in one line naming it (the
    tokenizer cache: warn and train without it), and what the folder held must stay as it was, whole."""
    case = space.fresh("read-only")
    case.mkdir()
    locked, args, code = _read_only_setup(space, name, case)
    before = {path: path.read_bytes() for path in locked.rglob("*") if path.is_file()}
    locked.chmod(0o555)
    try:
        outcome = space.run(args, unprivileged=True)
    finally:
        locked.chmod(0o755)
    if code == 0:
        problems = [] if outcome.returncode == 0 and "cannot keep tokenizers there" in outcome.stderr else [
            f"expected a warning and a finished run; got exit {outcome.returncode}: {outcome.stderr.strip()[-300:]}"]
    else:
        problems = _one_line_error(outcome, code, str(locked), os.strerror(errno.EACCES))
    after = {path: path.read_bytes() for path in locked.rglob("*") if path.is_file()}
    if after != before:
        problems.append(f"{locked.name}: its files changed: {sorted(str(p.name) for p in after.keys() ^ before.keys())}")
    problems += problems_in(case, valid_lines=space.corpus.valid_lines)
    return Case("read-only folder", name, problems, detail=(outcome.stderr.strip().splitlines() or [""])[-1][:200])


def _read_only_setup(space: Workspace, name: str, case: Path) -> tuple[Path, list[str], int]:
    """For READ_ONLY case `name`: the folder to lock, the command, and its expected exit code."""
    run = case / "run"
    if name == "train into a read-only empty folder":
        run.mkdir()
        return run, space.train_args(run, "--max-steps", "2", "-q"), 1
    if name == "train --resume in a read-only run folder":
        shutil.copytree(space.trained, run)
        return run, space.train_args(run, "--max-steps", "8", "--resume", "-q"), 1
    if name == "train into a new folder inside a read-only one":
        return case, space.train_args(run, "--max-steps", "2", "-q"), 1
    if name.startswith("translate"):
        if "over a file" in name:
            (case / "out.txt").write_text(EARLIER, encoding="utf-8")
        return case, space.translate_args(case / "out.txt"), 1
    if name.startswith("average"):
        return case, ["average", str(space.trained / "best.pt"), str(space.trained / "last.pt"), "-o", str(case / "a.pt")], 1
    cache = case / "cache"
    (cache / "tokenizers").mkdir(parents=True)
    return cache / "tokenizers", space.train_args(run, "--max-steps", "2", "--cache-dir", str(cache)), 0


# --- two runs at once ----------------------------------------------------------------------------------


CONCURRENT = ("two trains into one folder at once", "train --resume while the run trains",
              "translate from best.pt while train rewrites it", "two translates into one file at once")


def concurrent_case(space: Workspace, name: str, rng: random.Random) -> Case:
    """Run one of CONCURRENT; every file must be whole after, with no temporary file and no lock left."""
    out = space.fresh("concurrent")
    problems, detail = {"two trains into one folder at once": _two_trains,
                        "train --resume while the run trains": _resume_beside,
                        "translate from best.pt while train rewrites it": _translate_beside,
                        "two translates into one file at once": _two_translates}[name](space, out, rng)
    problems += problems_in(out, valid_lines=space.corpus.valid_lines)
    return Case("two runs at once", name, problems, detail)


def _in_use(outcome: Outcome, out: Path, pid: int) -> list[str]:
    return _one_line_error(outcome, 2, f"{out} is in use by another training run (pid {pid})")


def _two_trains(space: Workspace, out: Path, rng: random.Random) -> tuple[list[str], str]:
    """Two `train --overwrite` into one new folder, the second a random moment (0-1 s) after the first: one trains,
    the other is refused naming it, or (if the first was done by then) trains after it."""
    args = space.train_args(out, "--max-steps", "30", "--overwrite", "--no-cache")
    with space.start(args) as first:
        time.sleep(rng.uniform(0.0, 1.0))
        with space.start(args) as second:
            codes = (first.wait(), second.wait())
    if codes == (0, 0):
        return [], "the first had finished when the second started: both trained"
    refused, winner = (second, first) if codes == (0, 2) else (first, second)
    if sorted(codes) != [0, 2]:
        return [f"exits {codes}: {first.tail()} | {second.tail()}"], ""
    which = "the second" if refused is second else "the first"
    return _in_use(Outcome(2, "\n".join(refused.lines), []), out, winner.process.pid), f"{which} was refused"


def _resume_beside(space: Workspace, out: Path, rng: random.Random) -> tuple[list[str], str]:
    """`train --resume` (and `--overwrite`) into a folder a run is training in: refused naming its pid; the run,
    stopped with SIGTERM, saves and exits 143."""
    with space.start(space.train_args(out, "--max-steps", "100000", "--no-cache")) as first:
        if not first.wait_for_line("validation at step"):
            return [f"the first run ended: {first.tail()}"], ""
        problems = []
        for extra in ("--resume", "--overwrite"):
            refused = space.run(space.train_args(out, "--max-steps", "100000", extra, "-q"))
            problems += _in_use(refused, out, first.process.pid)
        code = first.stop()
    if code != 143:
        problems.append(f"the first run, sent SIGTERM, exited {code}: {first.tail()}")
    return problems, "--resume and --overwrite refused; SIGTERM saved and stopped the run"


def _translate_beside(space: Workspace, out: Path, rng: random.Random) -> tuple[list[str], str]:
    """Translate with the run's best.pt three times while train rewrites it at every step: each load sees a whole file."""
    with space.start(space.train_args(out / "run", "--max-steps", "100000", "--no-cache")) as run:
        if not run.wait_for_line("validation at step"):
            return [f"the run ended: {run.tail()}"], ""
        problems = []
        for number in range(3):
            done = space.run(["translate", "-m", str(out / "run" / "best.pt"), "-i", space.corpus.path("few.txt"),
                              "-o", str(out / f"out-{number}.txt"), "-q"])
            if done.returncode:
                problems.append(f"translate {number + 1} failed (exit {done.returncode}): {done.stderr.strip()[-300:]}")
        code = run.stop()
    if code != 143:
        problems.append(f"the run, sent SIGTERM, exited {code}: {run.tail()}")
    return problems, f"3 translates from best.pt while the run went on to step {last_step(out / 'run')}"


def _two_translates(space: Workspace, out: Path, rng: random.Random) -> tuple[list[str], str]:
    """Two translates (beam 1 and beam 5) into one out.txt, the second 0-1 s after the first: both succeed and
    out.txt is one of the two translations, whole."""
    out.mkdir()
    target = out / "out.txt"
    wholes = set()
    for beam in ("1", "5"):
        alone = out / f"beam-{beam}.txt"
        space.run(space.translate_args(alone, "--beam-size", beam, lines="input.txt"))
        wholes.add(alone.read_text(encoding="utf-8"))
    with space.start(space.translate_args(target, "--beam-size", "1", lines="input.txt")) as first:
        time.sleep(rng.uniform(0.0, 1.0))
        with space.start(space.translate_args(target, "--beam-size", "5", lines="input.txt")) as second:
            codes = (first.wait(), second.wait())
    problems = [] if codes == (0, 0) else [f"exits {codes}: {first.tail()} | {second.tail()}"]
    if target.read_text(encoding="utf-8") not in wholes:
        problems.append("out.txt is neither translation whole")
    return problems, ""


if __name__ == "__main__":  # python faultkit.py PATTERN POINT SPARE MARKER ARGS...: see the module's docstring
    _pattern, _point, _spare, _marker, *_args = sys.argv[1:]
    from cli.main import main

    sys.argv = ["seq2seq", *_args]
    with filled_disk(DiskFault(_pattern, _point, int(_spare), marker=Path(_marker))):
        main()
