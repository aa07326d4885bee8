"""Resumable training state as safetensors + JSON (no pickle anywhere).

``checkpoint/last.safetensors`` holds the model, loss-head and optimizer tensors;
``checkpoint/state.json`` the scalars (step, schedule length, best metric, resolved config).
``checkpoint/best.safetensors`` holds the best model so far.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from pipeline.core.errors import ModelArtifactError
from pipeline.core.io import atomic_path, write_json_atomic


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for idx, st in sd["state"].items():
        for name, val in st.items():
            if torch.is_tensor(val):
                tensors[f"opt.{idx}.{name}"] = val.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{name}"] = val
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, val in tensors.items():
        if key.startswith("opt."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = val
    for key, val in meta["scalars"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = val
    return {"state": state, "param_groups": meta["param_groups"]}


def _save_atomic(tensors: dict[str, torch.Tensor], path: Path) -> None:
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))


def save_checkpoint(ckpt_dir: Path, model: torch.nn.Module, head: torch.nn.Module, opt: torch.optim.Optimizer,
                    state: dict[str, Any]) -> None:
    """Write the resumable state (tensors first, then state.json as the commit point)."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors.update({f"head.{k}": v.detach().cpu().contiguous() for k, v in head.state_dict().items()})
    opt_tensors, opt_meta = _flatten_optimizer(opt)
    tensors.update(opt_tensors)
    _save_atomic(tensors, ckpt_dir / "last.safetensors")
    write_json_atomic(ckpt_dir / "state.json", {**state, "optimizer": opt_meta})


def save_best(ckpt_dir: Path, model: torch.nn.Module) -> None:
    """Keep the best model so far (what a time-out or crash still leaves)."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    _save_atomic({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, ckpt_dir / "best.safetensors")


def load_best(ckpt_dir: Path, model: torch.nn.Module) -> None:
    model.load_state_dict(load_file(str(ckpt_dir / "best.safetensors")))


def has_checkpoint(ckpt_dir: Path) -> bool:
    return (ckpt_dir / "state.json").is_file() and (ckpt_dir / "last.safetensors").is_file()


def load_checkpoint(ckpt_dir: Path, model: torch.nn.Module, head: torch.nn.Module,
                    opt: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore model, head and optimizer in place; return the saved scalars."""
    try:
        state = json.loads((ckpt_dir / "state.json").read_text())
        tensors = load_file(str(ckpt_dir / "last.safetensors"))
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        head.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("head.")})
        opt.load_state_dict(_unflatten_optimizer(tensors, state.pop("optimizer")))
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise ModelArtifactError(f"checkpoint in {ckpt_dir} cannot be resumed: {exc}") from exc
    return state
