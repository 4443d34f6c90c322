"""Every config problem raises ConfigError (a ValueError) whose message starts with its dotted key."""

from __future__ import annotations

import copy

import pytest

from mmfuse.models import ConfigError, build_model, normalize_model_config
from model_helpers import soc_config

MLB = {"name": "mlb", "out_dim": 8, "hidden_dim": 8}


def base():
    return soc_config(MLB)


def with_(path: str, value, config=None):
    """A copy of ``config`` (default: ``base()``) with the dotted ``path`` set; ``...`` deletes it."""
    config = copy.deepcopy(config or base())
    *parents, last = path.split(".")
    node = config
    for p in parents:
        node = node[p]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return config


MCAN = {"name": "mcan", "out_dim": 8, "hidden_dim": 8, "heads": 2, "num_layers": 1, "flat_mlp_dim": 8}
THREE_INPUTS = {**base()["inputs"], "w": {"encoder": "bits", "key": "question_bits", "dim": 4}}

CASES = [
    # (id, config, key, message fragment)
    ("no model section", {"data": {}, "train": {}}, "model", "missing required section"),
    ("not a mapping", ["task"], "model", "expected a mapping"),
    ("unknown section", with_("heads", {}), "model.heads", "did you mean head"),
    ("missing task", with_("task", ...), "model.task", "missing required section"),
    ("missing inputs", with_("inputs", ...), "model.inputs", "missing required section"),
    ("missing fusion", with_("fusion", ...), "model.fusion", "missing required section"),
    ("task kind", with_("task.kind", "ranking"), "model.task.kind", "classification, multilabel, regression"),
    ("task num_outputs", with_("task.num_outputs", 0), "model.task.num_outputs", "expected a positive int, got 0"),
    ("task missing kind", with_("task.kind", ...), "model.task.kind", "missing required key"),
    ("task unknown key", with_("task.classes", 3), "model.task.classes", "unknown key"),
    ("no inputs", with_("inputs", {}), "model.inputs", "at least one input"),
    ("input not a mapping", with_("inputs.q", "gru"), "model.inputs.q", "expected a mapping"),
    ("input name with a dot", with_("inputs", {"a.b": {"encoder": "bits", "dim": 3}}), "model.inputs.a.b", "no '.'"),
    ("missing encoder", with_("inputs.q.encoder", ...), "model.inputs.q.encoder", "missing required key"),
    ("unknown encoder", with_("inputs.q.encoder", "bert"), "model.inputs.q.encoder", "unknown encoder 'bert'"),
    ("vocab_size zero", with_("inputs.q.vocab_size", 0), "model.inputs.q.vocab_size", "expected a positive int, got 0"),
    ("vocab_size str", with_("inputs.q.vocab_size", "46"), "model.inputs.q.vocab_size", "expected a positive int, got '46'"),
    ("vocab_size bool", with_("inputs.q.vocab_size", True), "model.inputs.q.vocab_size", "positive int"),
    ("vocab_size missing", with_("inputs.q.vocab_size", ...), "model.inputs.q.vocab_size", "missing required key"),
    ("encoder typo", with_("inputs.q.num_layer", 2), "model.inputs.q.num_layer", "did you mean num_layers"),
    ("dropout", with_("inputs.q.dropout", 1.5), "model.inputs.q.dropout", "probability in [0, 1)"),
    ("bidirectional", with_("inputs.q.bidirectional", "yes"), "model.inputs.q.bidirectional", "true or false"),
    ("odd bidirectional", with_("inputs.q.bidirectional", True, with_("inputs.q.dim", 15)), "model.inputs.q.dim", "even dim"),
    ("padding_idx", with_("inputs.q.padding_idx", 46), "model.inputs.q.padding_idx", "below vocab_size 46"),
    ("mask_key", with_("inputs.v.mask_key", 5), "model.inputs.v.mask_key", "non-empty string"),
    ("region dim", with_("inputs.v.dim", -3), "model.inputs.v.dim", "positive int"),
    ("region hidden without dim", with_("inputs.v.hidden_dims", [8], with_("inputs.v.dim", None)), "model.inputs.v.dim",
     "hidden_dims need an output dim"),
    ("region center", with_("inputs.v.center", 1), "model.inputs.v.center", "true or false"),
    ("activation", with_("inputs.v.activation", "swish"), "model.inputs.v.activation", "activation name"),
    ("feed", with_("inputs.q.feed", "words"), "model.inputs.q.feed", "auto, sequence, vector"),
    ("feed sequence without one", with_("inputs.q", {"encoder": "bits", "dim": 4, "feed": "sequence"}),
     "model.inputs.q.feed", "makes no sequence"),
    ("transformer heads", with_("inputs.q", {"encoder": "transformer", "vocab_size": 9, "dim": 10, "heads": 4}),
     "model.inputs.q.heads", "must divide dim 10"),
    ("vector hidden without dim", with_("inputs.q", {"encoder": "vector", "in_dim": 3, "hidden_dims": [4]}),
     "model.inputs.q.dim", "hidden_dims need an output dim"),
    ("hidden_dims item", with_("inputs.q", {"encoder": "vector", "in_dim": 3, "dim": 2, "hidden_dims": [4, 0]}),
     "model.inputs.q.hidden_dims[1]", "positive int"),
    ("sequence hidden_dims", with_("inputs.q", {"encoder": "sequence", "in_dim": 3, "dim": 2, "hidden_dims": [4]}),
     "model.inputs.q.hidden_dims", "only used with rnn: mean"),
    ("sequence rnn", with_("inputs.q", {"encoder": "sequence", "in_dim": 3, "dim": 2, "rnn": "tcn"}),
     "model.inputs.q.rnn", "gru, lstm, mean"),
    ("unknown fusion", with_("fusion.name", "mbl"), "model.fusion.name", "unknown fusion 'mbl'; closest: mlb"),
    ("fusion name missing", with_("fusion.name", ...), "model.fusion.name", "missing required key"),
    ("fusion name type", with_("fusion.name", 3), "model.fusion.name", "non-empty string"),
    ("fusion knob typo", with_("fusion.hiden_dim", 8), "model.fusion.hiden_dim", "did you mean hidden_dim"),
    ("fusion reserved knob", with_("fusion.in_dims", [3, 3]), "model.fusion.in_dims", "set by the model"),
    ("fusion out_dim missing", with_("fusion.out_dim", ...), "model.fusion.out_dim", "missing required key"),
    ("fusion out_dim", with_("fusion.out_dim", -1), "model.fusion.out_dim", "positive int"),
    ("fusion knob value", with_("fusion.hidden_dim", 0), "model.fusion", "cannot build 'mlb'"),
    ("fusion knob not plain data", with_("fusion.hidden_dim", object()), "model.fusion.hidden_dim", "plain config data"),
    ("attention with three inputs", with_("inputs", THREE_INPUTS, with_("fusion", MCAN)), "model.inputs",
     "takes exactly 2 inputs"),
    ("attention v without sequence", with_("inputs.v", {"encoder": "bits", "dim": 8}, with_("fusion", MCAN)),
     "model.inputs.v.encoder", "must be a sequence"),
    ("attention v fed as vector", with_("inputs.v.feed", "vector", with_("fusion", MCAN)), "model.inputs.v.feed",
     "fed as a sequence"),
    ("attention v from a flattened cnn", with_("inputs.v", {"encoder": "cnn", "flatten": True, "height": 75, "width": 75},
                                               with_("fusion", MCAN)), "model.inputs.v.encoder", "must be a sequence"),
    ("flattened cnn without its image size", with_("inputs.v", {"encoder": "cnn", "flatten": True, "width": 75}),
     "model.inputs.v.height", "flatten needs the image size"),
    ("cnn keypoints with flatten", with_("inputs.v", {"encoder": "cnn", "flatten": True, "height": 75, "width": 75,
                                                     "keypoints": 6}), "model.inputs.v.keypoints", "set keypoints: null"),
    ("cnn keypoints without coords", with_("inputs.v", {"encoder": "cnn", "coords": False, "keypoints": 6}),
     "model.inputs.v.keypoints", "need coords: true"),
    ("cnn fourier without coords", with_("inputs.v", {"encoder": "cnn", "coords": False, "fourier_frequencies": 2}),
     "model.inputs.v.fourier_frequencies", "need coords: true"),
    ("cnn keypoint sharpness", with_("inputs.v", {"encoder": "cnn", "keypoints": 4, "keypoint_sharpness": -1.0}),
     "model.inputs.v.keypoint_sharpness", "positive finite number"),
    ("cnn conv norm", with_("inputs.v", {"encoder": "cnn", "conv_norm": "layer"}), "model.inputs.v.conv_norm",
     "one of"),
    ("cnn keypoints zero", with_("inputs.v", {"encoder": "cnn", "keypoints": 0}), "model.inputs.v.keypoints",
     "positive int"),
    ("cnn reconstruction without keypoints", with_("inputs.v", {"encoder": "cnn", "reconstruction_weight": 1.0}),
     "model.inputs.v.reconstruction_weight", "set keypoints"),
    ("cnn reconstruction weight", with_("inputs.v", {"encoder": "cnn", "keypoints": 4, "reconstruction_weight": -1}),
     "model.inputs.v.reconstruction_weight", "finite number >= 0"),
    ("cnn glimpse without keypoints", with_("inputs.v", {"encoder": "cnn", "keypoint_glimpse": 9}),
     "model.inputs.v.keypoint_glimpse", "set keypoints"),
    ("cnn keypoint norm without keypoints", with_("inputs.v", {"encoder": "cnn", "keypoint_norm": True}),
     "model.inputs.v.keypoint_norm", "set keypoints"),
    ("cnn reconstruction only without weight", with_("inputs.v", {"encoder": "cnn", "keypoints": 4,
                                                                  "reconstruction_only": True}),
     "model.inputs.v.reconstruction_only", "set reconstruction_weight > 0"),
    ("cnn reconstruction kernel even", with_("inputs.v", {"encoder": "cnn", "keypoints": 4, "reconstruction_weight": 1.0,
                                                          "reconstruction_kernel": 2}),
     "model.inputs.v.reconstruction_kernel", "odd size, got 2"),
    ("cnn reconstruction kernel zero", with_("inputs.v", {"encoder": "cnn", "reconstruction_kernel": 0}),
     "model.inputs.v.reconstruction_kernel", "positive int"),
    ("vector fusion modalities", with_("inputs", THREE_INPUTS, with_("fusion", {"name": "bilinear", "out_dim": 4})),
     "model.inputs", "takes 2 inputs, got 3"),
    ("head hidden_dims", with_("head.hidden_dims", [0]), "model.head.hidden_dims[0]", "positive int"),
    ("head hidden_dims scalar", with_("head.hidden_dims", 16), "model.head.hidden_dims", "list of positive ints"),
    ("head dropout", with_("head.dropout", -0.1), "model.head.dropout", "probability"),
    ("head activation", with_("head.activation", "softmax"), "model.head.activation", "activation name"),
]


@pytest.mark.parametrize("config, key, fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_config_error_names_its_key(config, key, fragment):
    with pytest.raises(ConfigError) as info:
        build_model(config)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.key == key
    assert str(err).startswith(f"{key}: "), str(err)
    assert fragment in str(err), str(err)


def test_exact_message_of_the_contract():
    with pytest.raises(ConfigError, match=r"^model\.inputs\.q\.vocab_size: expected a positive int, got 0$"):
        build_model(with_("inputs.q.vocab_size", 0))


def test_everything_is_checked_before_anything_is_built(monkeypatch):
    """A bad key anywhere fails before the fusion (the first module built) is constructed."""
    import mmfuse.models.task as task

    def boom(*args, **kwargs):
        raise AssertionError("a module was built before the config was checked")

    monkeypatch.setattr(task, "create_fusion", boom)
    for config in (with_("head.dropout", 2.0), with_("inputs.v.in_dim", 0), with_("fusion.hiden_dim", 3)):
        with pytest.raises(ConfigError):
            build_model(config)
    normalize_model_config(base())  # and checking alone builds nothing
