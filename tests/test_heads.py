import hydra.utils
import pytest
import torch
from conftest import CONF_DIR
from omegaconf import OmegaConf

from vitcls.models.heads import HEADS, LinearHead, MLPHead, build_head
from vitcls.run.design_plan import head_spec_of

HEAD_YAMLS = sorted(p.stem for p in (CONF_DIR / "head").glob("*.yaml"))


def test_every_head_yaml_is_registered_and_builds():
    assert {"linear", "mlp", "attention_pool", "cosine", "norm_linear"} <= set(HEAD_YAMLS)
    for name in HEAD_YAMLS:
        config = OmegaConf.load(CONF_DIR / "head" / f"{name}.yaml")
        assert not {"features", "last_k"} & set(config), name  # the feature tap is the `tap` node's
        partial = hydra.utils.instantiate(config)  # _partial_: called with what the classifier knows
        head = partial(in_features=24, num_classes=5)
        assert HEADS[name] is type(head)
        assert head.takes_tokens == (name == "attention_pool")  # tap.features=auto gives it tokens
        inputs = torch.randn(3, 7, 24) if head.takes_tokens else torch.randn(3, 24)
        assert head(inputs).shape == (3, 5)
        # what checkpoints store: the registered name and the settings, which rebuild the same head
        spec = head_spec_of(config)
        settings = {k: v for k, v in OmegaConf.to_container(config).items() if k not in ("_target_", "_partial_")}
        assert spec == {"name": name, "module": "vitcls.models.heads", **settings}
        rebuilt = build_head(spec, 24, 5)
        assert type(rebuilt) is type(head)
        assert rebuilt.state_dict().keys() == head.state_dict().keys()


def test_mlp_layers_follow_the_config():
    head = MLPHead(16, 4, hidden_dims=[32, 8], activation="relu", dropout=0.3, norm="layernorm")
    linears = [m for m in head.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(16, 32), (32, 8), (8, 4)]
    assert sum(isinstance(m, torch.nn.LayerNorm) for m in head.modules()) == 2
    assert sum(isinstance(m, torch.nn.ReLU) for m in head.modules()) == 2
    assert head(torch.randn(2, 16)).shape == (2, 4)


def test_mlp_with_batchnorm_trains_on_a_batch():
    head = MLPHead(8, 3, hidden_dims=[16], norm="batchnorm")
    assert head(torch.randn(4, 8)).shape == (4, 3)


def test_linear_dropout_is_active_only_in_training():
    head = LinearHead(10, 2, dropout=0.9)
    x = torch.randn(64, 10)
    head.eval()
    assert torch.equal(head(x), head(x))
    head.train()
    assert not torch.equal(head(x), head(x))


@pytest.mark.parametrize("kwargs, message", [
    ({"activation": "swishy"}, "head.activation"),
    ({"norm": "groupnorm"}, "head.norm"),
    ({"hidden_dims": [0]}, "head.hidden_dims"),
])
def test_bad_head_settings_name_the_setting(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MLPHead(8, 2, **kwargs)
