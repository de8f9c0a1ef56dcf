import pytest

from ctcae_core.config import ConfigError, ExperimentConfig, get_profile, list_profiles, parse_value, valid_keys


def test_profiles_cover_paper_variants_and_resolutions():
    names = set(list_profiles())
    for v in ("cae", "caepp", "ctcae"):
        for ds in ("tetrominoes", "multi_dsprites", "clevr6"):
            assert f"{v}_{ds}" in names and f"{v}_{ds}_small" in names
        assert f"{v}_multi_dsprites_64" in names and f"{v}_clevr6_96" in names
    cae, caepp, ctcae = (get_profile(f"{v}_tetrominoes") for v in ("cae", "caepp", "ctcae"))
    assert (cae.model.decoder, cae.model.out_conv, cae.model.out_sigmoid, cae.contrastive.weight) == ("transpose", True, True, 0.0)
    assert (caepp.model.decoder, caepp.model.out_conv, caepp.model.out_sigmoid, caepp.contrastive.weight) == ("upsample", False, False, 0.0)
    assert ctcae.model == caepp.model and ctcae.contrastive.weight == 1e-4 and ctcae.contrastive.temperature == 0.05
    assert ctcae.model.enc_channels == (128, 128, 256, 256, 256) and ctcae.train.lr == 4e-4 and ctcae.train.batch_size == 64
    full = get_profile("ctcae_clevr6_96")
    assert full.model.enc_strides == (2, 1, 2, 1, 2, 1, 2) and full.contrastive.dec_patch == 3
    assert (full.contrastive.enc_anchors, full.contrastive.enc_negatives, full.contrastive.enc_bottom_m) == (8, 16, 24)
    assert get_profile("ctcae_multi_dsprites_64").contrastive.dec_patch == 2
    small = get_profile("ctcae_tetrominoes_small")
    assert len(small.model.enc_channels) == 5 and max(small.model.enc_channels) < 128


def test_round_trip_and_overrides():
    cfg = get_profile("ctcae_tetrominoes")
    assert ExperimentConfig.from_dict(cfg.to_dict()) == cfg
    new = cfg.with_overrides(["model.decoder=transpose", "train.lr=1e-3", "model.enc_channels=8,8,16,16,16",
                              "model.out_sigmoid=true", "data.test_n_objects=5,6"])
    assert new.model.decoder == "transpose" and new.train.lr == 1e-3 and new.model.out_sigmoid is True
    assert new.model.enc_channels == (8, 8, 16, 16, 16) and new.data.test_n_objects == (5, 6)
    assert cfg.model.decoder == "upsample"  # frozen original untouched
    assert set(cfg.flat()) == set(valid_keys())
    assert parse_value("contrastive.temperature", "0.1") == 0.1


@pytest.mark.parametrize(
    "bad, needle",
    [
        ({"model": {"decodr": "upsample"}}, "model.decodr"),
        ({"modle": {}}, "modle"),
        ({"model": {"decoder": "deconv"}}, "upsample"),
        ({"model": {"out_conv": 1}}, "model.out_conv"),
        ({"train": {"lr": "fast"}}, "train.lr"),
        ({"train": {"steps": 1.5}}, "train.steps"),
        ({"model": {"enc_strides": [2, 1]}}, "model.enc_strides"),
        ({"contrastive": {"dec_positives": 6, "dec_top_k": 5}}, "dec_positives"),
        ({"contrastive": {"temperature": 0}}, "temperature"),
    ],
)
def test_strict_from_dict_names_the_key(bad, needle):
    with pytest.raises(ConfigError, match=needle):
        ExperimentConfig.from_dict(bad)


def test_unknown_key_error_lists_valid_keys():
    with pytest.raises(ConfigError) as e:
        get_profile("tiny").with_overrides(["model.sigmoid=true"])
    assert "out_sigmoid" in str(e.value)
    with pytest.raises(ConfigError, match="valid profiles"):
        get_profile("ctcae_mnist")
    with pytest.raises(ConfigError, match="key=value"):
        get_profile("tiny").with_overrides(["model.decoder"])
