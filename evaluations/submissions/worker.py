"""The worker: one submission's model in its own process, answering plain-array requests.

Started by :mod:`evaluations.submissions.remote` as ``python -I -B worker.py SPEC_JSON``, inside the
sandbox (:mod:`evaluations.submissions.sandbox`) or, for trusted submissions, in a plain child process.
It is the only code of the harness that runs next to a submission's code, so it trusts nothing after the
submission is imported and keeps nothing of value: it receives inputs, returns outputs and gradients.

Order of work, so that the limits bind before any submitted code runs:

1. keep the request pipe (stdin) and the reply pipe (stdout) on private descriptors, point stdin at
   ``/dev/null`` and stdout at stderr (a submission's prints go to the capped log, never the reply pipe);
2. take the lowest CPU priority (``nice``) and set the resource limits (address space, CPU seconds,
   processes, file size, no core files);
3. copy the submission's files into the private working directory (sandbox: a size-limited tmpfs);
4. load the model (:mod:`loading`: import the module or the ``torch.export`` program, build it, load the
   weights with ``weights_only=True``), then set torch's thread count;
5. reply READY, then serve FORWARD, FORWARD_KEEP and VJP requests until CLOSE or the pipe closes. A
   LOAD_FRONT request brings a ``torch.export`` program of the evaluator's (e.g. the denoiser of denoised
   smoothing) through the pipe; requests on its route are then answered for ``model(front(x))``, so the
   denoiser's passes run beside the model's instead of in the evaluator between two requests.

Failures become one FAILED text message (type and message of the exception, never a traceback object).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Any


def _sibling(name: str) -> Any:
    """A module of this folder, loaded under a private name (``python -I`` does not put the script's
    folder on ``sys.path``, and a submission may have its own ``wire.py``)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        f"_art_smoothing_worker_{name}", Path(__file__).with_name(f"{name}.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


if __package__:
    from . import loading, wire
else:  # run as a script in the sandbox, beside its sibling modules
    loading = _sibling("loading")
    wire = _sibling("wire")

#: Graphs kept for a later VJP (oldest dropped first); the evaluator resends x for a dropped one.
KEPT_GRAPHS = 8

#: The descriptors of the reply pipe, set by :func:`main` (module-level so the tests' hostile
#: submissions can find it, as a real attacker in the same process could).
channel_out_fd = -1


def apply_limits(limits: dict[str, list[int]]) -> None:
    """``setrlimit`` each ``RLIMIT_*`` name to its ``(soft, hard)`` pair: hard limits, which the
    submission cannot raise again."""
    for name, (soft, hard) in limits.items():
        resource.setrlimit(getattr(resource, name), (soft, hard))


def copy_submission(source: Path, target: Path) -> None:
    """Copy the submission's files (read-only in the sandbox) into the private working directory.
    Symbolic links are copied as links: inside the sandbox they cannot point anywhere outside it."""
    for item in source.iterdir():
        destination = target / item.name
        if item.is_symlink():
            destination.symlink_to(os.readlink(item))
        elif item.is_dir():
            shutil.copytree(item, destination, symlinks=True)
        else:
            shutil.copy2(item, destination)


def load_model(spec: dict[str, Any]) -> Any:
    folder = Path.cwd()
    if spec["format"] == "torch_export":  # relative: errors name the file as the student knows it
        return loading.load_exported_program(Path(spec["weights"]))
    obj = loading.import_attribute(spec["module"], "model.module", folder)
    model = loading.build_user_module(obj, spec["module"], spec["kwargs"])
    return loading.load_weights_into(model, Path(spec["weights"]), spec["module"])


def load_front(program: bytes) -> Any:
    """The evaluator's front program (written in eval mode by :func:`remote.export_front`), from the
    bytes of its file."""
    import io

    import torch

    try:
        return torch.export.load(io.BytesIO(program)).module()
    except Exception as error:  # the evaluator's program, not the submission's: say so
        detail = loading.describe_error(error)
        raise RuntimeError(f"the evaluator's front module did not load: {detail}") from None


def behind(front: Any, model: Any) -> Any:
    """``x -> model(front(x))``: the composition the evaluator asked this worker to answer for."""

    def composed(x: Any) -> Any:
        return model(front(x))

    return composed


def _outputs(result: Any) -> Any:
    import torch

    if not isinstance(result, torch.Tensor):
        raise TypeError(f"the model returned {type(result).__name__}, not a tensor of logits")
    return result


#: Input elements below which a request runs on one thread. On small inputs OpenMP's hand-offs between
#: threads cost more than they save (the evaluator runs AutoAttack's thousands of small steps on one
#: thread for the same reason); large batches (CERTIFY's noisy copies) use every thread the worker has.
ONE_THREAD_BELOW = 32768


def serve(model: Any, channel_in: int, channel_out: int, threads: int = 1) -> int:
    import torch

    current = torch.get_num_threads()

    def use_threads(array: Any) -> None:
        nonlocal current
        wanted = 1 if array is None or array.size < ONE_THREAD_BELOW else threads
        if wanted != current:
            torch.set_num_threads(wanted)
            current = wanted

    routes: dict[int, Any] = {0: model}  # 0: the submission's model; k: a LOAD_FRONT's composition
    kept: OrderedDict[int, tuple[Any, Any]] = OrderedDict()
    spin = 0.0  # after a small request another tends to follow at once: poll for it (wire.spin_for)
    while True:
        try:
            message = wire.read_message(
                channel_in, allowed=wire.Kind.REQUESTS, max_payload=1 << 40, spin=spin
            )
        except wire.ProtocolError:
            return 0  # the evaluator closed the pipe
        if message.kind == wire.Kind.CLOSE:
            return 0
        spin = wire.spin_for(0 if message.array is None else message.array.nbytes)
        if message.kind in (wire.Kind.FORWARD, wire.Kind.FORWARD_KEEP):  # a VJP: its forward pass's threads
            use_threads(message.array)
        try:
            if message.kind == wire.Kind.LOAD_FRONT:
                if message.route not in routes or message.tag == 0 or message.tag in routes:
                    raise ValueError(f"route {message.tag} in front of {message.route} cannot be set up")
                assert message.array is not None
                routes[message.tag] = behind(load_front(message.array.tobytes()), routes[message.route])
                reply = wire.encode(wire.Kind.READY, tag=message.tag)
            elif message.route not in routes:
                raise ValueError(f"no route {message.route}")
            elif message.kind == wire.Kind.FORWARD:
                with torch.no_grad():
                    out = _outputs(routes[message.route](torch.from_numpy(message.array)))
                reply = wire.encode(wire.Kind.ARRAY, out.detach().float().cpu().numpy(), message.tag)
            elif message.kind == wire.Kind.FORWARD_KEEP:
                x = torch.from_numpy(message.array).requires_grad_(True)
                with torch.enable_grad():
                    out = _outputs(routes[message.route](x))
                kept[message.tag] = (x, out)
                while len(kept) > KEPT_GRAPHS:
                    kept.popitem(last=False)
                reply = wire.encode(wire.Kind.ARRAY, out.detach().float().cpu().numpy(), message.tag)
            else:  # VJP
                if message.tag not in kept:
                    reply = wire.encode(wire.Kind.UNKNOWN_HANDLE, tag=message.tag)
                else:
                    x, out = kept.pop(message.tag)
                    cotangent = torch.from_numpy(message.array).to(out.dtype)
                    (grad,) = torch.autograd.grad(out, x, cotangent, allow_unused=True)
                    grad = torch.zeros_like(x) if grad is None else grad
                    reply = wire.encode(wire.Kind.ARRAY, grad.detach().float().cpu().numpy(), message.tag)
        except Exception as error:  # the model failed on this request: say so, keep serving
            reply = wire.encode(wire.Kind.FAILED, text=f"the model raised {loading.describe_error(error)}")
        wire.write_all(channel_out, reply)


def main(argv: list[str]) -> int:
    global channel_out_fd
    spec = json.loads(argv[1])
    channel_in, channel_out = os.dup(0), os.dup(1)
    channel_out_fd = channel_out
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
    os.nice(int(spec["nice"]))  # threads started later (OpenMP's) inherit it
    apply_limits(spec["limits"])
    if spec.get("copy_from"):
        copy_submission(Path(spec["copy_from"]), Path.cwd())
    try:
        model = load_model(spec)
        import torch

        torch.set_num_threads(int(spec["threads"]))
        if hasattr(model, "eval"):
            try:
                model.eval()
            except Exception:  # a torch.export module may refuse eval(); its mode was fixed at export
                pass
    except loading.LoadError as error:  # "config key 'model.…': expected …": the evaluator keeps the key
        wire.write_all(channel_out, wire.encode(wire.Kind.FAILED, text=" ".join(str(error).split())))
        return 1
    except BaseException as error:  # noqa: BLE001 -- whatever the submission raised, report it
        wire.write_all(
            channel_out, wire.encode(wire.Kind.FAILED, text=f"loading raised {loading.describe_error(error)}")
        )
        return 1
    wire.write_all(channel_out, wire.encode(wire.Kind.READY))
    return serve(model, channel_in, channel_out, int(spec["threads"]))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
