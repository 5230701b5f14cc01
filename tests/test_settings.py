from pathlib import Path

import pytest

from app.settings import Settings, SettingsError, load_settings


def test_flags_win_over_environment_which_wins_over_defaults():
    settings = load_settings({"port": "9000"}, {"DPP_PORT": "8000", "DPP_MAX_BATCH_TEXTS": "20"})
    assert settings.port == 9000
    assert settings.max_batch_texts == 20
    assert settings.host == Settings().host


def test_defaults_follow_the_contract():
    settings = Settings()
    assert settings.port == 7860
    assert settings.host == "0.0.0.0"
    assert settings.max_batch_texts == 50
    assert settings.device == "auto"


def test_environment_values_are_coerced_to_each_field_type(tmp_path):
    settings = load_settings({}, {"DPP_CPU_ONLY": "yes", "DPP_REQUEST_TIMEOUT_S": "2.5",
                                  "DPP_MODEL_DIR": str(tmp_path / "m")})
    assert settings.cpu_only is True
    assert settings.effective_device == "cpu"
    assert settings.request_timeout_s == 2.5
    assert settings.model_dir == tmp_path / "m"
    assert isinstance(settings.model_dir, Path)


def test_max_batch_size_zero_leaves_the_engine_to_choose():
    assert load_settings({}, {}).max_batch_size == 0
    assert load_settings({"max_batch_size": "8"}, {}).max_batch_size == 8


def test_unset_flags_leave_the_environment_in_charge():
    assert load_settings({"port": None}, {"DPP_PORT": "7001"}).port == 7001


@pytest.mark.parametrize("flags, env, name", [
    ({"port": "70000"}, {}, "port"),
    ({"port": "abc"}, {}, "port"),
    ({}, {"DPP_DEVICE": "tpu"}, "device"),
    ({}, {"DPP_DTYPE": "float8"}, "dtype"),
    ({}, {"DPP_CPU_ONLY": "perhaps"}, "cpu_only"),
    ({"max_batch_texts": "0"}, {}, "max_batch_texts"),
    ({"max_batch_size": "-1"}, {}, "max_batch_size"),
    ({}, {"DPP_DECODER": "beam"}, "decoder"),
])
def test_unusable_values_are_refused_naming_the_setting(flags, env, name):
    with pytest.raises(SettingsError, match=name):
        load_settings(flags, env)


@pytest.mark.parametrize("root_path", ["dpp", "/dpp/", "/", "/d p p", "//dpp"])
def test_a_root_path_that_a_proxy_could_not_mean_is_refused(root_path):
    with pytest.raises(SettingsError, match="root_path must be empty or a path such as /dpp"):
        Settings(root_path=root_path)


@pytest.mark.parametrize("path, root, below", [
    ("/dpp/healthz", "/dpp", "/healthz"), ("/dpp", "/dpp", "/"), ("/dppx/healthz", "/dpp", "/dppx/healthz"),
    ("/healthz", "", "/healthz"), ("/tools/dpp/jobs/1", "/tools/dpp", "/jobs/1"),
])
def test_routes_are_told_apart_below_the_root_path(path, root, below):
    from app.api_errors import route_path

    assert route_path({"path": path, "root_path": root}) == below
