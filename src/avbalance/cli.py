"""The command line around Hydra: checks before any run directory exists, resume from a run's own
config, one-line errors, and sweeps that outlive a failed run.

    train.py argv -> precheck (Hydra's own override parser and composition, every sweep cell)
                  -> resume=true: the run's saved config + safe overrides, trained here directly
                  -> otherwise Hydra's main -> run() per job -> SweepReport at the sweep's end
"""
from __future__ import annotations

import logging.config
import re
import shutil
import sys
import tempfile
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra._internal.utils import get_args_parser
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import MissingConfigException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from . import distributed, schema
from .config import resolve_device, validate
from .errors import ConfigError, UserError
from .rundir import atomic_write_text, load_checkpoint, read_json, write_json

ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = ROOT / "configs"
# keys a resume may change: they move or extend the run without changing what it computes
RESUME_SAFE = ("epochs", "device", "num_workers", "eval_batch_size", "speed", "logger")  # what a resume may change
RESUME_HINT = ".venv/bin/python train.py resume=true hydra.run.dir={}"
log = logging.getLogger("avbalance")


# --- one-line errors from Hydra's and OmegaConf's exceptions ------------------------------------
_KINDS = ((r"could not be converted to Integer", "expected an integer"),
          (r"could not be converted to Float", "expected a number"),
          (r"is not a valid bool", "expected true or false"),
          (r"Invalid value .*, expected one of \[(.*)\]", None))


def one_line(exc: BaseException) -> str:
    """The message a user needs, on one line: the key, the value and what is allowed."""
    for e in _chain(exc):
        if isinstance(e, MissingConfigException) and e.options is not None and e.missing_cfg_file:
            group, _, option = e.missing_cfg_file.rpartition("/")
            return f"{group}={option!r} is not a {group} option; expected one of {sorted(e.options)}"
        if isinstance(e, OmegaConfBaseException) and e.full_key:
            msg = str(e.msg or e).splitlines()[0]
            value = e.value if e.value is not None else _value_in(msg)
            for pattern, expected in _KINDS:
                m = re.search(pattern, msg)
                if m:
                    expected = expected or f"expected one of {[s.strip() for s in m.group(1).split(',')]}"
                    return f"{e.full_key}={value!r} is not allowed; {expected}"
            if re.search(r"Key '.*' not in", msg):
                return f"{e.full_key} is not a config key (check the spelling, or add a new key with +{e.full_key}=...)"
            return f"{e.full_key}: {msg}"
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return "; ".join(lines[:2]) or type(exc).__name__


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _value_in(msg: str):
    m = re.search(r"[Vv]alue '(.*?)'", msg)
    return m.group(1) if m else None


# --- composing as Hydra does ---------------------------------------------------------------------
class Composer:
    """Hydra's Compose API on the project's configs (the schemas registered first)."""

    def __enter__(self):
        schema.register()
        self._ctx = initialize_config_dir(version_base=None, config_dir=str(CONFIG_DIR), job_name="train")
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)

    def __call__(self, overrides: list[str]) -> DictConfig:
        task = [o for o in overrides if not _is_hydra(o)]
        try:
            return compose("train", overrides=task)
        except UserError:
            raise
        except Exception as e:  # Hydra's and OmegaConf's errors: one line
            raise ConfigError(one_line(e)) from None


def _is_hydra(override: str) -> bool:
    key = override.lstrip("+~").split("=", 1)[0]
    return key == "hydra" or key.startswith(("hydra.", "hydra/"))


def _key(override) -> str:
    return override.get_key_element().lstrip("+~")


# --- before Hydra runs anything ------------------------------------------------------------------
@dataclass
class Plan:
    argv: list[str]                    # what Hydra's main gets (unchanged unless resuming)
    resume_dir: Path | None = None
    resume_cfg: DictConfig | None = None  # resume / eval: the run's own config
    resume_choices: dict = field(default_factory=dict)
    eval_dir: Path | None = None


def precheck(argv: list[str]) -> Plan:
    """Everything Hydra would reject, rejected first in one line (no run directory is made):
    the overrides are parsed by Hydra's own parser, every sweep cell is composed against the
    schema, and a single run's values are validated. Anything this cannot expand (a sweeper's
    `interval`, `--cfg`, `--help`) is left to Hydra."""
    args, _ = get_args_parser().parse_known_args(argv)
    if args.help or args.hydra_help or args.cfg or args.info or args.shell_completion or args.config_name \
            or args.config_path or args.config_dir or getattr(args, "experimental_rerun", None):
        return Plan(argv)
    with Composer() as composer:
        try:
            parsed = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader()).parse_overrides(args.overrides)
        except Exception as e:
            raise ConfigError(f"cannot parse the overrides: {one_line(e)}") from None
        resume = [o for o in parsed if _key(o) == "resume" and not o.is_sweep_override()]
        if resume and str(resume[-1].value()).lower() == "true":
            if args.multirun:
                raise ConfigError("resume=true continues one run; resume each run of a sweep with hydra.run.dir=<its directory>")
            return _plan_resume(argv, args.overrides, parsed, composer)
        mode = [o for o in parsed if _key(o) == "mode" and not o.is_sweep_override()]
        ckpt = [o for o in parsed if _key(o) == "ckpt" and not o.is_sweep_override()]
        if mode and str(mode[-1].value()) == "eval" and ckpt and not args.multirun:
            plan = _plan_eval(argv, args.overrides, parsed, composer)
            if plan is not None:
                return plan
        if not args.multirun:
            if any(o.is_sweep_override() for o in parsed):
                return Plan(argv)  # Hydra says that a sweep needs --multirun
            cfg = composer(args.overrides)
            validate(cfg)
            resolve_device(cfg.device)
            return Plan(argv)
        try:  # the cells as Hydra's basic sweeper makes them; a sweep it cannot expand is Hydra's to judge
            cells = BasicSweeper.split_arguments(parsed, None)[0]
        except Exception:
            return Plan(argv)
        for cell in cells:  # every cell composes (types, choices); a cell's values are checked in its run
            try:
                composer(cell)
            except ConfigError as e:
                raise ConfigError(f"{e} (in the sweep cell {' '.join(o for o in cell if not _is_hydra(o))})") from None
    return Plan(argv)


def _plan_resume(argv: list[str], overrides: list[str], parsed, composer: Composer) -> Plan:
    dirs = [o for o in parsed if _key(o) == "hydra.run.dir"]
    if not dirs:
        raise ConfigError("resume=true needs the run to continue; add hydra.run.dir=<run directory>")
    run_dir = Path(str(dirs[-1].value()))
    if not (run_dir / ".hydra" / "overrides.yaml").exists():
        raise ConfigError(f"resume=true: {run_dir} is not a run directory (no .hydra/overrides.yaml); "
                          f"expected hydra.run.dir=<the directory of the run to continue>")
    if not (run_dir / "ckpt" / "last.pt").exists() or not (run_dir / "config_resolved.yaml").exists():
        raise ConfigError(f"resume=true: {run_dir} has no checkpoint yet (ckpt/last.pt is written at the end of "
                          f"the first epoch); start the run again without resume=true")
    cfg, choices = _run_config(run_dir, parsed, overrides, composer, "resume=true", skip=("resume",))
    cfg.resume = True
    return Plan(argv, run_dir, cfg, choices)


def _plan_eval(argv: list[str], overrides: list[str], parsed, composer: Composer) -> Plan | None:
    """mode=eval ckpt=<run>/ckpt/<x>.pt: the run's own config (as resume), results into <run>/eval_<x>/."""
    ckpt = Path(str([o for o in parsed if _key(o) == "ckpt"][-1].value()))
    run_dir = ckpt.parent.parent
    if not (run_dir / ".hydra" / "overrides.yaml").exists() or not (run_dir / "config_resolved.yaml").exists():
        return None  # a checkpoint outside a run directory: the command line's config is used
    cfg, choices = _run_config(run_dir, parsed, overrides, composer, "mode=eval", skip=("mode", "ckpt"))
    cfg.mode, cfg.ckpt = "eval", str(ckpt)
    dirs = [o for o in parsed if _key(o) == "hydra.run.dir"]
    return Plan(argv, eval_dir=Path(str(dirs[-1].value())) if dirs else run_dir / f"eval_{ckpt.stem}", resume_cfg=cfg,
                resume_choices=choices)


def _run_config(run_dir: Path, parsed, overrides: list[str], composer: Composer, what: str, skip=()) -> tuple:
    """A run's own config (config_resolved.yaml, typed by the schema) with the command line's safe
    overrides applied; any other override that would change it is refused in one line."""
    saved = [o for o in yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text()) or [] if not _is_hydra(o)]
    new = [(o, s) for o, s in zip(parsed, overrides) if not _is_hydra(s) and _key(o) not in skip]
    safe = [(o, s) for o, s in new if _key(o).split(".")[0] in RESUME_SAFE]
    base = OmegaConf.to_container(composer(saved), resolve=True)
    bad = [_key(o) for o, s in new
           if (o, s) not in safe and OmegaConf.to_container(composer(_replace(saved, [(o, s)])), resolve=True) != base]
    if bad:
        raise ConfigError(f"{what}: {', '.join(bad)} would change the run's saved config; "
                          f"only {', '.join(RESUME_SAFE)} may change")
    safe_keys = {_key(o) for o, _ in safe}
    composed = composer(_replace(saved, safe))
    cfg = OmegaConf.merge(composed, OmegaConf.load(run_dir / "config_resolved.yaml"))  # the run's own values, typed
    for key in safe_keys:
        OmegaConf.update(cfg, key, OmegaConf.select(composed, key), merge=False)
    validate(cfg)
    resolve_device(cfg.device)
    choices = read_json(run_dir / "meta.json").get("choices", {}) if (run_dir / "meta.json").exists() else {}
    if "logger" in safe_keys:
        choices["logger"] = composed.logger.name
    return cfg, choices


def _replace(saved: list[str], new: list[tuple]) -> list[str]:
    """The saved overrides with those of the same keys replaced by the new ones."""
    keys = {_key(o) for o, _ in new}
    return [o for o in saved if o.lstrip("+~").split("=", 1)[0] not in keys] + [s for _, s in new]


# --- one job ---------------------------------------------------------------------------------
def run(cfg: DictConfig, run_dir: Path, choices: dict, *, multirun: bool, fresh_dir: bool = True):
    """Train one run. A single run's error is one line and exit 2 (Ctrl-C: one line, exit 130);
    in a sweep, a failed run writes its status and reason into summary.json and the sweep goes on."""
    from .trainer import format_summary, train

    if cfg.mode == "eval":  # evaluate a checkpoint: eval.json and predictions_<split>.csv into the run dir
        from .evalmode import run_eval
        try:
            run_eval(cfg, Path(cfg.ckpt), run_dir)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        return None
    done = run_dir / "summary.json"
    env = distributed.env()
    main = env.main  # under torchrun: rank 0 alone writes and prints
    skip = cfg.skip_done and done.exists() and read_json(done).get("status") == "ok"
    if env.world > 1:  # rank 0's run dir decides (the others' is scratch): every process skips, or none does
        distributed.setup(resolve_device(cfg.device), cfg.ddp.backend)
        skip = distributed.broadcast(skip)
    if skip:
        if not main:
            return None
        print(f"skipped (finished before): {run_dir}")  # skip_done=true: re-running a table runs what is missing
        return read_json(done)["best"].get("val/acc")
    try:
        summary = train(cfg, run_dir, choices)
    except KeyboardInterrupt:
        print(f"interrupted: {_progress(run_dir)}", file=sys.stderr)
        sys.exit(130)
    except Exception as e:
        reason = str(e) if isinstance(e, UserError) else one_line(e)
        if not multirun:
            if not isinstance(e, UserError):
                raise
            if main and fresh_dir and run_dir.exists() and {p.name for p in run_dir.iterdir()} <= {".hydra", "train.log"}:
                shutil.rmtree(run_dir, ignore_errors=True)  # failed before training: leave no empty run
            print(f"error: {reason}", file=sys.stderr)
            sys.exit(2)
        log.error("run failed: %s%s", reason, "" if isinstance(e, UserError) else "\n" + traceback.format_exc())
        if main:
            write_json(run_dir / "summary.json", {"status": "failed", "reason": reason, "error": type(e).__name__,
                                                  "overrides": _task_overrides(), "choices": choices, "seed": cfg.seed,
                                                  "dataset": cfg.dataset.name})
        if env.world > 1:
            # one process may fail alone (out of memory on its GPU): going on to the next run would pair its
            # collectives with the other processes' current run. The process ends, so the sweep stops and
            # torchrun (srun with --kill-on-bad-exit) ends the others. SystemExit, not the error: Hydra's
            # run_job catches every Exception and its launcher starts the next run
            log.error("run failed in one of %d processes: the sweep stops here", env.world)
            raise SystemExit(1)
        return None
    if main:
        print(format_summary(summary))
        print(f"run directory: {run_dir}")
    return summary["best"]["val/acc"]  # what a Hydra sweeper optimises


def _task_overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def _progress(run_dir: Path) -> str:
    done = 0
    if (run_dir / "metrics.jsonl").exists():
        done = len([ln for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln.strip()])
    if not (run_dir / "ckpt" / "last.pt").exists():
        return f"in epoch {done}, before the first checkpoint; nothing to resume, run the command again"
    saved = load_checkpoint(run_dir / "ckpt" / "last.pt", map_location="cpu")["epoch"]  # ckpt_every may lag the log
    return f"in epoch {done}, epochs 0-{saved} are saved; continue with: {RESUME_HINT.format(run_dir)}"


def resume(plan: Plan) -> None:
    """Continue a run from its own config, outside Hydra (its .hydra/ stays as the run began)."""
    conf = yaml.safe_load((CONFIG_DIR / "hydra" / "job_logging" / "avbalance.yaml").read_text())
    conf["handlers"]["file"]["filename"] = str(plan.resume_dir / "train.log")  # appended to
    logging.config.dictConfig(conf)
    if distributed.env().main:
        meta = read_json(plan.resume_dir / "meta.json") if (plan.resume_dir / "meta.json").exists() else {}
        meta.setdefault("resumes", []).append({"argv": sys.argv[1:]})
        write_json(plan.resume_dir / "meta.json", meta)
        atomic_write_text(plan.resume_dir / "config_resolved.yaml", OmegaConf.to_yaml(plan.resume_cfg, resolve=True))
    run(plan.resume_cfg, plan.resume_dir, plan.resume_choices, multirun=False, fresh_dir=False)


def main(argv: list[str], hydra_main) -> int:
    try:
        plan = precheck(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if plan.resume_dir is not None:
        resume(plan)
        return 0
    if plan.eval_dir is not None:
        from .evalmode import run_eval
        try:
            run_eval(plan.resume_cfg, Path(plan.resume_cfg.ckpt), plan.eval_dir)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"wrote {plan.eval_dir}/eval.json and predictions_<split>.csv")
        return 0
    rank = distributed.env().rank
    if rank > 0:  # torchrun: Hydra's own output of ranks > 0 goes to a scratch folder; rank 0's run dir is
        scratch = Path(tempfile.gettempdir()) / f"avbalance-rank{rank}"  # broadcast to them (trainer.py)
        sys.argv += [f"hydra.run.dir={scratch}/run", f"hydra.sweep.dir={scratch}/multirun", "hydra.output_subdir=null"]
    hydra_main()
    return 1 if SweepReport.failed else 0


# --- the end of a sweep ------------------------------------------------------------------------
try:
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover
    Callback = object


class SweepReport(Callback):
    """At the end of a multirun: how many runs failed and where (the process then exits 1)."""
    failed = 0

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        if not distributed.env().main:  # under torchrun, rank 0's sweep directory is the one that holds the runs
            return
        sweep_dir = Path(str(config.hydra.sweep.dir))
        jobs = sorted(p.parent for p in sweep_dir.glob("*/.hydra"))
        bad = []
        for job in jobs:
            s = job / "summary.json"
            status = read_json(s).get("status", "ok") if s.exists() else "unfinished"
            if status != "ok":
                bad.append((job, read_json(s).get("reason", "") if s.exists() else "no summary.json"))
        type(self).failed = len(bad)
        if bad:
            print(f"error: {len(bad)} of {len(jobs)} runs failed in {sweep_dir}: "
                  + "; ".join(f"{job.name} ({reason})" for job, reason in bad), file=sys.stderr)
