"""Check a GPU machine in one command, in under 10 minutes (``make gpu-check``): the CUDA tests, eager against
compiled training steps, then RobustResNet64 on its 300-epoch paper schedule for the time that is left.

    python -m lib.bench.gpu_check --data-dir data                  # CIFAR-10 in data/cifar-10-batches-py/
    python -m lib.bench.gpu_check --download                       # fetch the official archive into --data-dir first
    python -m lib.bench.gpu_check --jpeg-dir data/jpeg             # convert the JPEG copy of CIFAR-10 found there
    python -m lib.bench.gpu_check --dry-run --out scratch/gpu-dry-run   # every stage on the CPU on smoke data, minutes

Any python with torch, torchvision, pandas and pytest runs it (no network needed but for --download). Stages, each
a child process under its own time limit, its output in OUT/<stage>.log; OUT/summary.json is rewritten as each
one ends, and a stage that fails or runs out of time never stops the next:

  data           CIFAR-10 in --data-dir; else converted there from the two tarballs of --jpeg-dir
                 (cifar10-train-jpeg.tar.gz, cifar10-test-jpeg.tar.gz) by the converter beside them
                 (cifar10_from_jpeg.py); else --download. A copy that is not the official release is recorded so.
  tests          pytest -m "cuda and not compile" tests/test_cuda.py
  bench_eager    python -m lib.bench: robust_resnet64 and light_resnet18, the configured step (bf16 where the card
                 has it, channels_last) against plain fp32, fed by the device loader, and a real epoch -> OUT/*.json
  bench_compile, bench_cuda_graphs   the same steps with --compile, and --compile --cuda-graphs (no real epoch)
  compile_tests  pytest -m "cuda and compile", only when a minute of it still leaves the training
                 --min-train-minutes (default 2)
  train          robust_resnet64, paper profile, its 300-epoch schedule, --time-limit for what is left, --resume,
                 with the step the benchmarks found fastest (eager if the compile tests ran and failed; --step)
                 -> OUT/robust_resnet64/ (history.csv, ...)

--skip leaves stages out. Run again with the same --out, it continues the training (--resume). Exit code: 0 when
every stage passed, 1 when one failed or ran out of time, 2 for a bad option (before anything runs). The dry run
runs each stage for real but tiny (lib.bench --tiny, a few images, torch.compile switched off by
TORCH_COMPILE_DISABLE): it checks the chain, not the machine.
"""
from __future__ import annotations

import datetime
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ..common import ArgumentParser, UserError, atomic_write_text, run_cli

REPO = Path(__file__).resolve().parents[2]
MODEL = "robust_resnet64"
JPEG_FILES = ("cifar10_from_jpeg.py", "cifar10-train-jpeg.tar.gz", "cifar10-test-jpeg.tar.gz")
# The training steps the benchmarks compare, and the lib.train flags of each.
STEPS = {"eager": [], "compile": ["--compile"], "cuda_graphs": ["--compile", "--cuda-graphs"]}
# Each stage's limit in seconds (a stage also never runs past what the training's minimum leaves).
LIMITS = {"data": 150, "tests": 120, "bench_eager": 100, "bench_compile": 120, "bench_cuda_graphs": 120,
          "compile_tests": 180}
# Dry run: tiny settings of the real stages.
DRY_TRAIN = ["--epochs", "2", "--train-size", "50", "--val-size", "20", "--batch-size", "10", "--base-channels",
             "8", "--blocks-per-group", "1"]


def has_cifar(data_dir: Path) -> bool:
    batches = data_dir / "cifar-10-batches-py"
    return all((batches / name).is_file() for name in ("data_batch_5", "test_batch", "batches.meta"))


def fastest_step(bench: dict[str, dict[str, Any]], model: str = MODEL) -> tuple[str | None, dict[str, float]]:
    """The step (a key of STEPS) whose benchmark trained ``model`` fastest fed by the device loader, with every
    rate found; None when no benchmark got that far."""
    rates = {}
    for step, result in bench.items():
        rate = (result or {}).get("train_step_with_loader_img_s", {}).get(model)
        if rate:
            rates[step] = float(rate)
    return (max(rates, key=rates.get) if rates else None), rates


def choose_step(asked: str, bench: dict[str, dict[str, Any]], compile_tests: str | None) -> tuple[str, dict]:
    """The training run's step: ``asked``, or for "fastest" the fastest benchmark's, but eager when nothing was
    measured or when the compile tests ran and failed (faster, but not shown to be correct on this card)."""
    best, rates = fastest_step(bench)
    if asked != "fastest":
        return asked, rates
    if best is None or (best != "eager" and compile_tests in ("failed", "time limit")):
        return "eager", rates
    return best, rates


class Check:
    """Runs the stages one after another against one deadline, keeping every result in ``out`` as it comes."""

    def __init__(self, out: Path, seconds: float, env: dict[str, str]):
        self.out, self.deadline, self.env = out, time.monotonic() + seconds, env
        self.summary: dict[str, Any] = {"started": _now(), "budget_s": seconds, "stages": []}

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def say(self, line: str) -> None:
        print(line, flush=True)
        with open(self.out / "gpu_check.log", "a") as f:
            f.write(line + "\n")

    def save(self) -> None:
        atomic_write_text(self.out / "summary.json", json.dumps(self.summary, indent=2) + "\n")

    def record(self, name: str, status: str, **extra: Any) -> dict[str, Any]:
        entry = {"stage": name, "status": status, **extra}
        self.summary["stages"].append(entry)
        self.save()
        return entry

    def skip(self, name: str, why: str) -> None:
        self.say(f"== {name}: skipped ({why})")
        self.record(name, "skipped", reason=why)

    def stage(self, name: str, cmd: list[str], limit: float, env: dict[str, str] | None = None,
              log_name: str | None = None) -> dict[str, Any]:
        """``cmd`` in the repository under a hard limit (SIGTERM, then SIGKILL 10 s later), output into
        OUT/<name>.log. Passed = exit code 0 within the limit."""
        log = self.out / (log_name or f"{name}.log")
        self.say(f"== {name}: at most {limit:.0f} s ({self.left():.0f} s left): {shlex.join(cmd)}")
        t0 = time.monotonic()
        with open(log, "w") as f:
            proc = subprocess.Popen(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env={**self.env, **(env or {})},
                                    start_new_session=True)  # its own process group: pytest's children stop too
            timed_out = False
            try:
                rc = proc.wait(timeout=max(limit, 1))
            except subprocess.TimeoutExpired:
                timed_out = True
                rc = _stop(proc)
        seconds = time.monotonic() - t0
        status = "passed" if rc == 0 and not timed_out else "time limit" if timed_out else "failed"
        tail = log.read_text(errors="replace").splitlines()[-3:]
        self.say(f"== {name}: {status} (exit {rc}) after {seconds:.0f} s" + "".join(f"\n   {t}" for t in tail))
        return self.record(name, status, exit_code=rc, seconds=round(seconds, 1), log=log.name, command=cmd)


def _stop(proc: subprocess.Popen) -> int:
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 30)):  # lib.train ends its epoch cleanly on SIGTERM
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            return proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    return proc.wait()


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def machine(check: Check) -> None:
    """The card as nvidia-smi names it and the versions, into machine.txt and summary.json."""
    lines = []
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,compute_cap",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
        lines += [f"gpu: {g.strip()}" for g in smi.stdout.splitlines() if g.strip()] or [f"nvidia-smi: {smi.stderr}"]
    except (OSError, subprocess.TimeoutExpired) as exc:
        lines.append(f"no nvidia-smi here ({exc.__class__.__name__})")
    versions = subprocess.run([sys.executable, "-c", "import sys, torch, torchvision; print('python', "
                               "sys.version.split()[0], 'torch', torch.__version__, 'torchvision', "
                               "torchvision.__version__, 'cuda', torch.version.cuda)"],
                              capture_output=True, text=True, timeout=120, env=check.env)
    lines.append(versions.stdout.strip() or versions.stderr.strip())
    (check.out / "machine.txt").write_text("\n".join(lines) + "\n")
    check.summary["machine"] = lines
    for line in lines:
        check.say(line)
    check.save()


def prepare_data(check: Check, args) -> bool:
    """True when --data-dir holds CIFAR-10 (after converting or downloading it if need be)."""
    data, py = args.data_dir, sys.executable
    if args.dry_run and not has_cifar(data):
        from ..sources.synthetic import write_smoke_dataset
        write_smoke_dataset(data)
        check.say(f"== data: synthetic smoke data in {data} (dry run)")
        check.record("data", "passed", data=str(data), source="synthetic smoke data (dry run)")
    elif has_cifar(data):
        check.say(f"== data: CIFAR-10 in {data}")
        check.record("data", "passed", data=str(data))
    elif args.jpeg_dir is not None:
        conv, train_tar, test_tar = (str(args.jpeg_dir / f) for f in JPEG_FILES)
        # one conversion after the other: both write batches.meta
        first = check.stage("data", [py, conv, train_tar, str(data)], min(LIMITS["data"], check.left()),
                            log_name="data_train.log")
        check.summary["stages"].pop()  # recorded once, below, with both halves
        result = check.stage("data", [py, conv, test_tar, str(data), "--batch-name", "test_batch"],
                             min(LIMITS["data"], check.left()), log_name="data_test.log")
        result.update(log="data_train.log, data_test.log", first=first)
        if first["status"] != "passed" or not has_cifar(data):
            result["status"] = "failed"
        check.save()
    else:  # --download (checked in main)
        code = "import sys; from lib.data import load_cifar10; load_cifar10(sys.argv[1], download=True)"
        check.stage("data", [py, "-c", code, str(data)], min(LIMITS["data"], check.left()))
    return has_cifar(data)


def run(args) -> int:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.log").unlink(missing_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if args.dry_run:
        env["TORCH_COMPILE_DISABLE"] = "1"  # the chain, not inductor's minutes of compilation
    check = Check(out, args.minutes * 60, env)
    reserve = args.min_train_minutes * 60  # kept for the training by every stage before it
    check.summary.update(device=args.device, dry_run=args.dry_run, minutes=args.minutes)
    check.say(f"== gpu-check: {args.minutes:g} min, device {args.device}, results in {out}")
    py = sys.executable
    machine(check)
    have_data = prepare_data(check, args)
    data_args = ["--data-dir", str(args.data_dir)] if have_data else []

    def limit(name: str) -> float:
        return min(LIMITS[name], check.left() - reserve)

    tests = [py, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs", "tests/test_cuda.py"]
    if "tests" in args.skip:
        check.skip("tests", "--skip")
    else:
        check.stage("tests", [*tests, "-m", "cuda and not compile"], limit("tests"))

    bench = [py, "-m", "lib.bench", "--device", args.device, "--models", MODEL, "light_resnet18", *data_args,
             *(["--tiny"] if args.dry_run else []), *shlex.split(args.bench_args)]
    results = {}
    for step, flags in STEPS.items():
        name, json_file = f"bench_{step}", out / f"bench_{step}.json"
        json_file.unlink(missing_ok=True)
        if name in args.skip:
            check.skip(name, "--skip")
            continue
        if step == "cuda_graphs" and args.device != "cuda":
            check.skip(name, "CUDA graphs need a CUDA device")
            continue
        if limit(name) < 20:
            check.skip(name, "no time left before the training")
            continue
        extra = [] if step == "eager" else ["--no-epoch", "--no-ops"]  # a real epoch once: the eager one
        check.stage(name, [*bench, *flags, *extra, "--json", str(json_file)], limit(name))
        if json_file.is_file():  # lib.bench writes it after every phase: a cut-off run keeps what it measured
            results[step] = json.loads(json_file.read_text())

    if "compile_tests" in args.skip:
        check.skip("compile_tests", "--skip")
    elif limit("compile_tests") >= 60:
        check.stage("compile_tests", [*tests, "-m", "cuda and compile"], limit("compile_tests"))
    else:
        check.skip("compile_tests", f"needs a minute beyond --min-train-minutes {args.min_train_minutes:g}")

    compile_tests = next((s["status"] for s in check.summary["stages"] if s["stage"] == "compile_tests"), None)
    step, rates = choose_step(args.step, results, compile_tests)
    check.summary["train_step"] = {"chosen": step, "asked": args.step, f"{MODEL}_img_s_with_loader": rates,
                                   "compile_tests": compile_tests}
    check.say(f"== step: {step} ({', '.join(f'{k} {v:,.1f} img/s' for k, v in rates.items()) or 'no measurement'}"
              f"; compile tests {compile_tests})")
    train = [py, "-m", "lib.train", "--model", MODEL, "--device", args.device, *data_args,
             *(["--download"] if args.download and not have_data else []), "--out", str(out / MODEL), "--resume",
             "--no-progress", *STEPS[step], *(DRY_TRAIN if args.dry_run else []), *shlex.split(args.train_args)]
    seconds = check.left() - 10  # for the last copies
    minutes = (seconds - args.train_reserve_seconds) / 60
    if minutes > 0:
        check.stage("train", [*train, "--time-limit", f"{minutes:.2f}"], seconds)
        history = out / MODEL / "history.csv"
        if history.is_file():
            rows = history.read_text().splitlines()
            check.summary["train"] = {"epochs_in_history": len(rows) - 1, "last_row": rows[-1], "header": rows[0]}
            check.say(f"   history.csv: {len(rows) - 1} epochs; {rows[0]}\n   {rows[-1]}")
    else:
        check.record("train", "failed", reason=f"no time left ({seconds:.0f} s)")
        check.say(f"== train: failed: no time left ({seconds:.0f} s)")
    failed = [s["stage"] for s in check.summary["stages"] if s["status"] in ("failed", "time limit")]
    check.summary.update(finished=_now(), failed=failed)
    check.save()
    check.say(f"== gpu-check done; {'failed: ' + ', '.join(failed) if failed else 'every stage passed'}; "
              f"results in {out}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m lib.bench.gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/gpu-check"), help="every result goes here")
    p.add_argument("--minutes", type=float, default=9.5, help="the whole check, stages and training (default 9.5)")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--data-dir", type=Path, default=Path("data"), help="CIFAR-10 folder (default data)")
    p.add_argument("--download", action="store_true", help="fetch the official archive when --data-dir has none")
    p.add_argument("--jpeg-dir", type=Path, help=f"a folder with {', '.join(JPEG_FILES)}: converted into --data-dir")
    p.add_argument("--step", choices=["fastest", *STEPS], default="fastest",
                   help="the training step for the run (default: whichever benchmark was fastest)")
    p.add_argument("--min-train-minutes", type=float, default=2.0,
                   help="kept for the training by every stage before it (default 2)")
    p.add_argument("--skip", nargs="+", default=[], choices=[s for s in LIMITS if s != "data"], metavar="STAGE",
                   help=f"stages to leave out: {', '.join(s for s in LIMITS if s != 'data')}")
    p.add_argument("--train-reserve-seconds", type=float, default=30,
                   help="kept back from the training's --time-limit for its start and last epoch (default 30)")
    p.add_argument("--dry-run", action="store_true",
                   help="every stage on the CPU on smoke data, tiny (checks the chain, not the machine)")
    p.add_argument("--bench-args", default="", help="further lib.bench options, one string")
    p.add_argument("--train-args", default="", help="further lib.train options, one string")
    args = p.parse_args(argv)
    if args.dry_run:
        args.device = "cpu"
    if args.minutes <= 0 or args.min_train_minutes < 0:
        raise UserError("--minutes must be > 0 and --min-train-minutes >= 0")
    if args.device not in ("cuda", "cpu"):
        raise UserError(f"--device {args.device}: choose cuda or cpu")
    for name in ("bench_args", "train_args"):
        try:
            shlex.split(getattr(args, name))
        except ValueError as exc:
            raise UserError(f"--{name.replace('_', '-')}: {exc}") from None
    if args.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            raise UserError("--device cuda: no CUDA device here (--dry-run runs every stage on the CPU)")
    if args.jpeg_dir is not None:
        missing = [f for f in JPEG_FILES if not (args.jpeg_dir / f).is_file()]
        if missing and not has_cifar(args.data_dir):
            raise UserError(f"--jpeg-dir {args.jpeg_dir}: no {', '.join(missing)} there")
    if not (args.dry_run or has_cifar(args.data_dir) or args.jpeg_dir or args.download):
        raise UserError(f"--data-dir {args.data_dir}: no CIFAR-10 there; add --download, or --jpeg-dir FOLDER with "
                        f"{', '.join(JPEG_FILES)}")
    args.out, args.data_dir = args.out.resolve(), args.data_dir.resolve()
    if args.jpeg_dir is not None:
        args.jpeg_dir = args.jpeg_dir.resolve()
    if args.dry_run and args.data_dir == (REPO / "data").resolve():
        args.data_dir = args.out / "smoke-data"  # never next to a real CIFAR-10
    return run(args)


if __name__ == "__main__":
    sys.exit(run_cli(main))
