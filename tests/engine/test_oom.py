"""What counts as running out of memory, the halving back-off, and the command line's last resort:
an ``OSError`` a user can meet or running out of memory is one line and exit status 1."""

from __future__ import annotations

import errno
import sys

import numpy as np
import pytest
import torch

from engine.cli import main
from engine.oom import Backoff, OutOfMemory, is_oom, run_halving
from engine.oserrors import WriteError, one_line, write_error, writing


class FakeOrtError(Exception):
    """Like ONNX Runtime's pybind errors: not a RuntimeError, from an ``onnxruntime`` module."""


FakeOrtError.__module__ = "onnxruntime.capi.onnxruntime_pybind11_state"


@pytest.mark.parametrize("exc", [
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    RuntimeError("CUDA error: out of memory"),
    RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8589934592 bytes."),
    RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: "
                 "you tried to allocate 1073741824 bytes."),
    RuntimeError("MPS backend out of memory"),
    RuntimeError("could not create a primitive"),  # oneDNN's convolution under a memory limit
    MemoryError(),
    FakeOrtError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory for requested buffer"),
])
def test_out_of_memory_is_recognised_on_gpu_and_cpu(exc: BaseException) -> None:
    assert is_oom(exc)


def test_a_real_numpy_allocation_failure_counts() -> None:
    try:
        np.empty(1 << 62, np.uint8)
    except MemoryError as exc:
        assert is_oom(exc)
    else:  # pragma: no cover - a machine with 4 EiB
        pytest.skip("the allocation succeeded")


@pytest.mark.parametrize("exc", [RuntimeError("mat1 and mat2 shapes cannot be multiplied"),
                                 ValueError("bad value"), OSError(errno.ENOSPC, "No space left on device"),
                                 FakeOrtError("INVALID_ARGUMENT: wrong input")])
def test_other_errors_are_not_out_of_memory(exc: BaseException) -> None:
    assert not is_oom(exc)


def limited(fits: int, calls: list[int]):
    """A batched function that runs out of memory above ``fits`` items; records every call's size."""
    def fn(chunk):
        calls.append(len(chunk))
        if len(chunk) > fits:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return [2 * x for x in chunk]
    return fn


def test_chunks_halve_until_they_fit_keep_the_size_and_give_the_same_results() -> None:
    calls: list[int] = []
    seen: list[int] = []
    backoff = Backoff(8, "too big", on_backoff=seen.append)
    got = [y for _, out in backoff.chunks(limited(2, calls), list(range(11))) for y in out]
    assert got == [2 * x for x in range(11)]  # as if it had never failed
    assert seen == backoff.backoffs == [4, 2] and backoff.size == 2
    assert calls == [8, 4, 2, 2, 2, 2, 2, 1]  # never back above what fits
    assert run_halving(limited(3, []), list(range(5)), 16, "too big") == [[0, 2], [4, 6], [8]]


def test_a_numpy_batch_is_split_in_order() -> None:
    x = np.arange(40).reshape(10, 4)
    parts = run_halving(lambda c: limited(3, [])(list(c)) and c * 2, x, 8, "too big")
    assert np.array_equal(np.concatenate(parts), x * 2)


def test_out_of_memory_with_one_item_is_the_callers_one_line() -> None:
    calls: list[int] = []
    with pytest.raises(OutOfMemory, match="^slide.svs: out of memory even on one window$") as info:
        list(Backoff(4, "slide.svs: out of memory even on one window").chunks(limited(0, calls), [1, 2, 3]))
    assert calls == [3, 2, 1] and "\n" not in str(info.value)


def test_other_errors_are_raised_at_once_never_retried() -> None:
    calls: list[int] = []

    def broken(size: int) -> None:
        calls.append(size)
        raise RuntimeError("shapes do not match")

    with pytest.raises(RuntimeError, match="shapes"):
        Backoff(8, "x").call(broken)
    assert calls == [8]


def test_first_calls_failing_whatever_their_size() -> None:
    """Memory another program held, then freed: the first two calls fail, the rest fit."""
    state = {"n": 0}

    def flaky(size: int) -> int:
        state["n"] += 1
        if state["n"] <= 2:
            raise MemoryError()
        return size

    backoff = Backoff(8, "x")
    assert backoff.call(flaky) == 2 and backoff.backoffs == [4, 2]


# -- disk errors as one line ------------------------------------------------------------------

def test_write_errors_name_the_file_and_what_is_wrong(tmp_path) -> None:
    exc = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / ".x.tmp"))
    assert str(write_error(exc, tmp_path / "x.tif")) == f"cannot write {tmp_path / 'x.tif'}: no space left on device"
    with pytest.raises(WriteError, match="cannot write .*out: read-only file system$"):
        with writing(tmp_path / "out"):
            raise OSError(errno.EROFS, "Read-only file system")
    assert one_line(OSError(errno.ENOSPC, "No space left on device")) == "no space left on device"
    assert one_line(OSError(errno.EACCES, "Permission denied", "/a/b")) == "/a/b: permission denied"
    assert one_line(OSError(errno.ECONNRESET, "Connection reset by peer")) is None
    assert one_line(RuntimeError("boom")) is None
    assert "out of memory" in (one_line(MemoryError()) or "")
    assert "cannot start a thread" in (one_line(RuntimeError("can't start new thread")) or "")


@pytest.fixture
def failing_command(monkeypatch: pytest.MonkeyPatch):
    """``cocopath-engine infer …`` made to raise the given error."""
    import engine.inference.commands as commands

    def use(exc: BaseException) -> None:
        def fail(_args) -> int:
            raise exc
        monkeypatch.setattr(commands, "_infer", fail)
    return use


@pytest.mark.parametrize("code", ["ENOSPC", "EROFS", "EACCES", "EISDIR", "ENOTDIR", "EDQUOT"])
def test_the_cli_turns_an_escaping_os_error_into_one_line(code: str, failing_command, capsys, tmp_path) -> None:
    n = getattr(errno, code)
    import os

    failing_command(OSError(n, os.strerror(n), str(tmp_path / "f.bin")))
    assert main(["infer", "s.svs", "--model", "m.safetensors", "--out", "o"]) == 1
    err = capsys.readouterr().err
    assert err == f"cocopath-engine: {tmp_path / 'f.bin'}: {os.strerror(n)[:1].lower()}{os.strerror(n)[1:]}\n"


@pytest.mark.parametrize("exc", [MemoryError(), torch.OutOfMemoryError("CUDA out of memory"),
                                 RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 GiB")])
def test_the_cli_turns_running_out_of_memory_into_one_line(exc, failing_command, capsys) -> None:
    failing_command(exc)
    assert main(["infer", "s.svs", "--model", "m.safetensors", "--out", "o"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "out of memory" in err and "smaller batch" in err


def test_the_cli_still_raises_a_programming_error(failing_command) -> None:
    failing_command(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    with pytest.raises(RuntimeError, match="shapes"):
        main(["infer", "s.svs", "--model", "m.safetensors", "--out", "o"])


def test_no_torch_is_needed_to_judge_an_error() -> None:
    import subprocess

    code = ("import sys; from engine.oom import is_oom; from engine.oserrors import one_line; "
            "assert is_oom(MemoryError()) and not is_oom(RuntimeError('x')); "
            "assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
