"""Checkpoints: round trip, dimension refusal, and exact imports of official SAM-MIL and CLAM_SB models.

The reference modules below are written from the published module structure (key names, layer order,
activations) so their state dicts have the original keys; the import must reproduce their logits exactly.
"""

import json

import pytest
import torch
from torch import nn

from sammil_deploy.errors import CheckpointError
from sammil_deploy.mil.checkpoint import load_checkpoint, make_meta, save_checkpoint
from sammil_deploy.mil.config import ModelConfig
from sammil_deploy.mil.external import import_external_checkpoint
from sammil_deploy.mil.model import build_model


class OfficialSamMil(nn.Module):
    """Official SAM-MIL / MHIM AB-MIL layout: patch_to_emb, online_encoder...attention, predictor."""

    def __init__(self, gated: bool, act: nn.Module, abmil_init: bool = False, in_dim: int = 1024):
        super().__init__()
        self.patch_to_emb = nn.Sequential(nn.Linear(in_dim, 512), nn.ReLU())
        self.dp = nn.Dropout(0.25)
        attn = nn.Module()
        if gated:
            attn.attention_a = nn.Sequential(nn.Linear(512, 128, bias=False), act)
            attn.attention_b = nn.Sequential(nn.Linear(512, 128, bias=False), nn.Sigmoid())
            attn.attention_c = nn.Linear(128, 1, bias=False)
        else:
            attn.attention = nn.Sequential(nn.Linear(512, 128, bias=False), act, nn.Linear(128, 1, bias=False))
        self.online_encoder = nn.Module()
        if abmil_init:
            self.online_encoder.attention = attn
        else:
            self.online_encoder.attn_model = nn.Module()
            self.online_encoder.attn_model.attention = attn
        self.attn = attn
        self.gated = gated
        self.predictor = nn.Linear(512, 2)
        for p in self.parameters():
            nn.init.normal_(p, std=0.05)

    def forward(self, x):
        h = self.dp(self.patch_to_emb(x))
        if self.gated:
            s = self.attn.attention_c(self.attn.attention_a(h) * self.attn.attention_b(h))
        else:
            s = self.attn.attention(h)
        a = torch.softmax(s.T, dim=-1)
        return self.predictor(a @ h)[0]

    def original_state_dict(self):
        return {k: v for k, v in self.state_dict().items() if not k.startswith("attn.")}


class ClamSB(nn.Module):
    """CLAM_SB layout: attention_net = [Linear, ReLU, Dropout, Attn_Net(_Gated)], classifiers, instance_classifiers."""

    def __init__(self, gated: bool, in_dim: int = 1024, hidden: int = 512, attn: int = 256, n_classes: int = 2):
        super().__init__()
        net = nn.Module()
        if gated:
            net.attention_a = nn.Sequential(nn.Linear(hidden, attn), nn.Tanh(), nn.Dropout(0.25))
            net.attention_b = nn.Sequential(nn.Linear(hidden, attn), nn.Sigmoid(), nn.Dropout(0.25))
            net.attention_c = nn.Linear(attn, 1)
        else:
            net.module = nn.Sequential(nn.Linear(hidden, attn), nn.Tanh(), nn.Dropout(0.25), nn.Linear(attn, 1))
        self.attention_net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(0.25), net)
        self.classifiers = nn.Linear(hidden, n_classes)
        self.instance_classifiers = nn.ModuleList([nn.Linear(hidden, 2) for _ in range(n_classes)])
        self.gated = gated
        for p in self.parameters():
            nn.init.normal_(p, std=0.05)

    def forward(self, x):
        h = self.attention_net[2](self.attention_net[1](self.attention_net[0](x)))
        net = self.attention_net[3]
        s = net.attention_c(net.attention_a(h) * net.attention_b(h)) if self.gated else net.module(h)
        a = torch.softmax(s.T, dim=1)
        return self.classifiers(a @ h)[0]


def _roundtrip_file(tmp_path, state, wrap):
    path = tmp_path / "external.pth"
    torch.save({"model": state, "teacher": state} if wrap else state, path)
    return path


@pytest.mark.parametrize(
    ("gated", "abmil_init", "wrap"), [(False, False, True), (True, False, False), (False, True, False)]
)
def test_official_import_reproduces_logits_exactly(tmp_path, gated, abmil_init, wrap):
    torch.manual_seed(0)
    ref = OfficialSamMil(gated, nn.ReLU(), abmil_init).eval()
    path = _roundtrip_file(tmp_path, ref.original_state_dict(), wrap)
    ckpt = import_external_checkpoint(path, feature_dim=1024)
    assert ckpt.meta.source == ("official-abmil" if abmil_init else "official-sammil")
    cfg = ckpt.model_config
    assert (cfg.gated, cfg.activation, cfg.attention_bias, cfg.embed_dim, cfg.attn_dim) == (
        gated,
        "relu",
        False,
        512,
        128,
    )
    x = torch.randn(300, 1024)
    with torch.no_grad():
        expected = ref(x)
        logits, attention = ckpt.model(x)
    assert torch.equal(logits, expected)
    assert attention.shape == (300,)


@pytest.mark.parametrize("gated", [True, False])
def test_clam_import_reproduces_logits_exactly(tmp_path, gated):
    torch.manual_seed(1)
    ref = ClamSB(gated, in_dim=64, hidden=48, attn=24, n_classes=3).eval()
    ckpt = import_external_checkpoint(_roundtrip_file(tmp_path, ref.state_dict(), False))
    cfg = ckpt.model_config
    assert (cfg.in_dim, cfg.embed_dim, cfg.attn_dim, cfg.n_classes) == (64, 48, 24, 3)
    assert (cfg.activation, cfg.attention_bias, cfg.gated, ckpt.meta.group_tokens) == ("tanh", True, gated, False)
    x = torch.randn(120, 64)
    with torch.no_grad():
        assert torch.equal(ckpt.model(x)[0], ref(x))


def test_import_refuses_unknown_layouts_and_dims(tmp_path):
    bad = tmp_path / "bad.pth"
    torch.save({"encoder.weight": torch.zeros(2, 2)}, bad)
    with pytest.raises(CheckpointError, match="unknown checkpoint layout"):
        import_external_checkpoint(bad)
    ref = OfficialSamMil(False, nn.ReLU(), in_dim=1024)
    path = _roundtrip_file(tmp_path, ref.original_state_dict(), True)
    with pytest.raises(CheckpointError, match="1024-dim"):
        import_external_checkpoint(path, feature_dim=512)


@pytest.mark.parametrize("kind", ["attention", "mean", "max"])
def test_checkpoint_round_trip_gives_identical_predictions(tmp_path, kind):
    cfg = ModelConfig(kind=kind, in_dim=24, embed_dim=32, attn_dim=16, n_classes=3, gated=kind == "attention")
    model = build_model(cfg).eval()
    meta = make_meta(
        cfg,
        class_names=["a", "b", "c"],
        group_tokens=True,
        feature_extractor="synthetic",
        threshold=None,
        metrics={"auc": 0.9},
    )
    weights = save_checkpoint(tmp_path / "fold0", model, meta)
    assert weights.name == "fold0.safetensors"
    assert (tmp_path / "fold0.json").is_file()
    assert not list(tmp_path.glob("*.partial"))
    x = torch.randn(57, 24)
    loaded = load_checkpoint(weights, feature_dim=24)
    with torch.no_grad():
        for a, b in zip(model(x), loaded.model(x), strict=True):
            assert torch.equal(a, b)
    assert loaded.meta.class_names == ("a", "b", "c")
    assert loaded.meta.metrics == {"auc": 0.9}
    assert json.loads((tmp_path / "fold0.json").read_text())["feature_extractor"] == "synthetic"
    (tmp_path / "fold0.json").unlink()  # the copy embedded in the safetensors metadata is enough
    assert load_checkpoint(tmp_path / "fold0").meta.model == meta.model


def test_load_refuses_mismatch(tmp_path):
    cfg = ModelConfig(in_dim=24, embed_dim=32, attn_dim=16)
    weights = save_checkpoint(
        tmp_path / "m", build_model(cfg), make_meta(cfg, class_names=["0", "1"], group_tokens=False)
    )
    with pytest.raises(CheckpointError, match="expects 24-dim features"):
        load_checkpoint(weights, feature_dim=1024)
    sidecar = json.loads((tmp_path / "m.json").read_text())
    sidecar["model"]["embed_dim"] = 64
    (tmp_path / "m.json").write_text(json.dumps(sidecar))
    with pytest.raises(CheckpointError, match="weights do not match"):
        load_checkpoint(weights)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.safetensors")
