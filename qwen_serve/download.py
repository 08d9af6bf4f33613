"""Fetch the Qwen3-ASR checkpoints (and the forced aligner) from Hugging Face into the models directory.

    python -m qwen_serve.download                    # every configured checkpoint (both models + the aligner)
    python -m qwen_serve.download qwen-asr-0.6b      # one model
    python -m qwen_serve.download qwen3-forcedaligner-0.6b   # the forced aligner (word timestamps)
    python -m qwen_serve.download --if-missing       # only what is not there yet

Model ids, directories and repositories come from the same settings as the
server: serve_config.yaml's app args (when the file is present, or --config)
with the QWEN_* environment variables on top, so QWEN_MODELS_DIR decides
where checkpoints go. Uses `huggingface_hub.snapshot_download` (HF_TOKEN,
HF_ENDPOINT and HF_HUB_OFFLINE are honoured).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .settings import Settings

COMMAND = "python -m qwen_serve.download"


def checkpoint_problem(model_dir: Path) -> str | None:
    """Why model_dir is not a usable checkpoint directory, or None when it looks complete."""
    if not model_dir.is_dir():
        return "the directory does not exist"
    if not (model_dir / "config.json").is_file():
        return "config.json is missing"
    if not any(model_dir.glob("*.safetensors")):
        return "no *.safetensors weights"
    if not ((model_dir / "vocab.json").is_file() or (model_dir / "tokenizer.json").is_file()):
        return "no tokenizer files"
    return None


def missing_checkpoint_message(model_id: str, model_dir: Path, problem: str, repo: str | None) -> str:
    """The operator-facing error for a model whose checkpoint is not there."""
    source = f" (downloads {repo} from Hugging Face)" if repo else ""
    return (
        f"Model '{model_id}' has no usable checkpoint at {model_dir}: {problem}. "
        f"Fetch it with `{COMMAND} {model_id}`{source}, or point QWEN_MODELS_DIR at the directory that holds it."
    )


def download(model_id: str, settings: Settings) -> Path:
    """Downloads one checkpoint (a model id, or the forced aligner's id); returns its directory."""
    from huggingface_hub import snapshot_download

    target, repo = settings.checkpoints()[model_id]
    if not repo:
        raise ValueError(
            f"model '{model_id}' has no Hugging Face repository configured (models.{model_id}.repo)"
        )
    target.mkdir(parents=True, exist_ok=True)
    snapshot_download(repo_id=repo, local_dir=str(target))
    problem = checkpoint_problem(target)
    if problem:
        raise RuntimeError(f"downloaded {repo} into {target}, but {problem}")
    return target


def config_args(path: Path) -> dict[str, Any]:
    """The app args of qwen_serve's application in a Serve config file."""
    import yaml

    config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    for app in config.get("applications", []):
        if str(app.get("import_path", "")).startswith("qwen_serve"):
            return dict(app.get("args") or {})
    return {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=COMMAND, description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("models", nargs="*", help="model ids (default: every configured model)")
    parser.add_argument(
        "--models-dir", type=Path, help="where checkpoints go (default: QWEN_MODELS_DIR or ./models)"
    )
    parser.add_argument(
        "--config",
        type=Path,
        help="Serve config to read app args from (default: ./serve_config.yaml if present)",
    )
    parser.add_argument(
        "--if-missing", action="store_true", help="skip models whose checkpoint is already complete"
    )
    args = parser.parse_args(argv)

    config = args.config or (Path("serve_config.yaml") if Path("serve_config.yaml").is_file() else None)
    app_args = config_args(config) if config else {}
    if args.models_dir:
        app_args["models_dir"] = args.models_dir
    settings = Settings.from_args(app_args)
    if args.models_dir:  # the command line wins over the environment too
        settings = settings.model_copy(update={"models_dir": args.models_dir})

    known = settings.checkpoints()
    wanted = args.models or list(known)
    unknown = [m for m in wanted if m not in known]
    if unknown:
        print(
            f"error: unknown model id(s): {', '.join(unknown)}; known: {', '.join(known)}",
            file=sys.stderr,
        )
        return 2
    failed = 0
    for model_id in wanted:
        target, repo = known[model_id]
        if args.if_missing and checkpoint_problem(target) is None:
            print(f"{model_id}: present at {target}")
            continue
        print(f"{model_id}: downloading {repo} into {target} ...", flush=True)
        try:
            download(model_id, settings)
        except Exception as e:  # network, auth, disk: report and go on with the next model
            print(f"error: {model_id}: {type(e).__name__}: {e}", file=sys.stderr)
            failed += 1
        else:
            print(f"{model_id}: done")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
