"""Configuration (sfu/config.py): defaults, config/sfu.toml, env overrides, validation errors."""

from __future__ import annotations

import contextlib
import dataclasses
import tomllib
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sfu.config import Config, ConfigError, load
from sfu.control.auth import mint_token, verify_token

SFU_TOML = Path(__file__).parent.parent / "config" / "sfu.toml"
SECRET = "0123456789abcdef" * 2  # the shortest auth.secret allowed: 32 bytes


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sfu.toml"
    path.write_text(text, encoding="utf-8")
    return path


def load_error(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> str:
    """The message of the ConfigError that loading ``text`` raises."""
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, text), env={} if env is None else env)
    return str(info.value)


def env_error(env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as info:
        load(None, env=env)
    return str(info.value)


# -- defaults -----------------------------------------------------------------------


def test_shipped_toml_loads_to_the_built_in_defaults() -> None:
    assert dataclasses.asdict(load(SFU_TOML, env={})) == dataclasses.asdict(Config())


def test_shipped_toml_spells_out_every_default() -> None:
    with SFU_TOML.open("rb") as f:
        assert tomllib.load(f) == dataclasses.asdict(Config())


def test_defaults_are_valid_and_loopback_only() -> None:
    config = Config()
    config.validate()
    assert dataclasses.asdict(load(None, env={})) == dataclasses.asdict(config)
    assert config.server.host == "127.0.0.1"
    assert config.auth.mode == "development"
    assert config.rtc.listen_ips == ["127.0.0.1"]


def test_defaults_do_not_share_lists() -> None:
    first, second = Config(), Config()
    first.rtc.listen_ips.append("10.0.0.1")
    assert second.rtc.listen_ips == ["127.0.0.1"]
    assert load(None, env={}).rtc.listen_ips == ["127.0.0.1"]


def test_empty_file_is_the_defaults(tmp_path: Path) -> None:
    config = load(write(tmp_path, "# nothing\n"), env={})
    assert dataclasses.asdict(config) == dataclasses.asdict(Config())


def test_file_overrides_some_keys(tmp_path: Path) -> None:
    config = load(
        write(
            tmp_path,
            '[server]\nport = 9001\nlog_level = "debug"\n'
            '[rtc]\nlisten_ips = ["127.0.0.1", "::1"]\nport_min = 50000\nport_max = 50010\n'
            "[rooms]\nauto_subscribe = false\n",
        ),
        env={},
    )
    assert config.server.port == 9001
    assert config.server.log_level == "debug"
    assert config.server.host == "127.0.0.1"  # untouched keys keep their defaults
    assert config.rtc.listen_ips == ["127.0.0.1", "::1"]
    assert (config.rtc.port_min, config.rtc.port_max) == (50000, 50010)
    assert config.rooms.auto_subscribe is False
    assert config.rooms.max_participants == 25


# -- environment --------------------------------------------------------------------


def test_env_overrides() -> None:
    config = load(
        SFU_TOML,
        env={
            "SFU_SERVER_PORT": "9000",
            "SFU_RTC_LISTEN_IPS": "10.0.0.1,127.0.0.1",
            "SFU_ROOMS_AUTO_SUBSCRIBE": "false",
        },
    )
    assert config.server.port == 9000
    assert config.rtc.listen_ips == ["10.0.0.1", "127.0.0.1"]
    assert config.rooms.auto_subscribe is False
    expected = Config()
    expected.server.port = 9000
    expected.rtc.listen_ips = ["10.0.0.1", "127.0.0.1"]
    expected.rooms.auto_subscribe = False
    assert dataclasses.asdict(config) == dataclasses.asdict(expected)


def test_env_wins_over_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nport = 9001\n")
    assert load(path, env={"SFU_SERVER_PORT": "9002"}).server.port == 9002
    assert load(path, env={}).server.port == 9001


def test_env_string_and_int_fields() -> None:
    config = load(
        None,
        env={
            "SFU_SERVER_HOST": "::1",
            "SFU_AUTH_MODE": "jwt",
            "SFU_AUTH_SECRET": SECRET,
            "SFU_RTC_ANNOUNCED_IP": "203.0.113.7",
            "SFU_RTC_FORWARDER": "python",
            "SFU_RTC_KEYFRAME_REQUEST_INTERVAL_MS": "0",
            "SFU_ROOMS_MAX_PARTICIPANTS": "1000",
        },
    )
    assert config.server.host == "::1"
    assert (config.auth.mode, config.auth.secret) == ("jwt", SECRET)
    assert config.rtc.announced_ip == "203.0.113.7"
    assert config.rtc.forwarder == "python"
    assert config.rtc.keyframe_request_interval_ms == 0
    assert config.rooms.max_participants == 1000


def test_env_list_is_split_and_stripped() -> None:
    config = load(None, env={"SFU_RTC_LISTEN_IPS": " 10.0.0.1 , ,127.0.0.1 "})
    assert config.rtc.listen_ips == ["10.0.0.1", "127.0.0.1"]


@pytest.mark.parametrize(
    ("text", "value"),
    [("true", True), ("1", True), ("yes", True), ("ON", True), (" True ", True),
     ("false", False), ("0", False), ("no", False), ("Off", False), ("FALSE", False)],
)
def test_env_booleans(text: str, value: bool) -> None:
    assert load(None, env={"SFU_ROOMS_AUTO_SUBSCRIBE": text}).rooms.auto_subscribe is value


def test_env_ignores_variables_not_named_sfu() -> None:
    config = load(None, env={"PORT": "1", "SERVER_PORT": "2", "sfu_server_port": "3"})
    assert dataclasses.asdict(config) == dataclasses.asdict(Config())


@pytest.mark.parametrize("name", ["SFU_SERVER_PROT", "SFU_PORT", "SFU_SERVER_NOPE", "SFU_"])
def test_env_refuses_sfu_variables_naming_no_key(name: str) -> None:
    message = env_error({name: "1", "SFU_SERVER_PORT": "9000"})
    assert name in message
    assert "SFU_SERVER_PORT" not in message


@pytest.mark.parametrize("name", ["SFU_PUREPYTHON", "SFU_BENCH_NETNS"])
def test_env_allows_the_variables_the_project_uses_besides_keys(name: str) -> None:
    config = load(None, env={name: "1"})
    assert dataclasses.asdict(config) == dataclasses.asdict(Config())


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SFU_SERVER_PORT", "eighty"),
        ("SFU_SERVER_PORT", "80.5"),
        ("SFU_SERVER_PORT", ""),
        ("SFU_ROOMS_AUTO_SUBSCRIBE", "maybe"),
        ("SFU_ROOMS_AUTO_SUBSCRIBE", ""),
        ("SFU_ROOMS_MAX_PARTICIPANTS", "many"),
    ],
)
def test_env_wrong_type_names_variable_and_value(name: str, value: str) -> None:
    message = env_error({name: value})
    assert name in message
    assert repr(value) in message


@pytest.mark.parametrize(
    ("name", "value", "key"),
    [
        ("SFU_SERVER_PORT", "70000", "server.port"),
        ("SFU_RTC_LISTEN_IPS", "", "rtc.listen_ips"),
        ("SFU_RTC_LISTEN_IPS", "10.0.0.1,nope", "rtc.listen_ips"),
        ("SFU_SERVER_HOST", "0.0.0.0", "server.host"),
    ],
)
def test_env_values_are_validated(name: str, value: str, key: str) -> None:
    message = env_error({name: value})
    assert key in message


# -- validation errors name the key and the bad value ---------------------------------


@pytest.mark.parametrize("port", [-1, 65536, 70000])
def test_bad_port(tmp_path: Path, port: int) -> None:
    message = load_error(tmp_path, f"[server]\nport = {port}\n")
    assert "server.port" in message
    assert str(port) in message


@pytest.mark.parametrize("port", [0, 1, 65535])
def test_port_bounds_are_accepted(tmp_path: Path, port: int) -> None:
    assert load(write(tmp_path, f"[server]\nport = {port}\n"), env={}).server.port == port


def test_unknown_section(tmp_path: Path) -> None:
    message = load_error(tmp_path, "[sever]\nport = 9000\n")
    assert "[sever]" in message
    assert "sfu.toml" in message


def test_unknown_key(tmp_path: Path) -> None:
    message = load_error(tmp_path, "[server]\nprot = 9000\n")
    assert "server.prot" in message
    assert "sfu.toml" in message


def test_section_that_is_not_a_table(tmp_path: Path) -> None:
    message = load_error(tmp_path, "server = 9000\n")
    assert "[server]" in message


@pytest.mark.parametrize(
    ("section", "key", "value", "shown"),
    [
        ("server", "port", '"8080"', "'8080'"),
        ("server", "port", "8080.0", "8080.0"),
        ("server", "port", "true", "True"),
        ("server", "host", "127", "127"),
        ("server", "log_level", "1", "1"),
        ("rooms", "auto_subscribe", "1", "1"),
        ("rooms", "auto_subscribe", '"false"', "'false'"),
        ("rooms", "max_participants", "true", "True"),
        ("rtc", "listen_ips", '"127.0.0.1"', "'127.0.0.1'"),
        ("rtc", "listen_ips", "[1]", "[1]"),
        ("rtc", "listen_ips", '["127.0.0.1", 2]', "['127.0.0.1', 2]"),
        ("rtc", "port_min", "[40000]", "[40000]"),
    ],
)
def test_wrong_type(tmp_path: Path, section: str, key: str, value: str, shown: str) -> None:
    message = load_error(tmp_path, f"[{section}]\n{key} = {value}\n")
    assert f"{section}.{key}" in message
    assert shown in message


@pytest.mark.parametrize("level", ["verbose", "INFO", "", "warn"])
def test_bad_log_level(tmp_path: Path, level: str) -> None:
    message = load_error(tmp_path, f'[server]\nlog_level = "{level}"\n')
    assert "server.log_level" in message
    assert repr(level) in message


@pytest.mark.parametrize("level", ["debug", "info", "warning", "error"])
def test_log_levels(tmp_path: Path, level: str) -> None:
    path = write(tmp_path, f'[server]\nlog_level = "{level}"\n')
    assert load(path, env={}).server.log_level == level


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "example.org", ""])
def test_non_loopback_host_in_development_mode(tmp_path: Path, host: str) -> None:
    message = load_error(tmp_path, f'[server]\nhost = "{host}"\n')
    assert "server.host" in message
    assert repr(host) in message


@pytest.mark.parametrize("host", ["127.0.0.1", "127.1.2.3", "::1", "localhost"])
def test_loopback_hosts_in_development_mode(tmp_path: Path, host: str) -> None:
    assert load(write(tmp_path, f'[server]\nhost = "{host}"\n'), env={}).server.host == host


def test_any_host_in_jwt_mode(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f'[server]\nhost = "0.0.0.0"\n[auth]\nmode = "jwt"\nsecret = "{SECRET}"\n',
    )
    config = load(path, env={})
    assert (config.server.host, config.auth.mode) == ("0.0.0.0", "jwt")


# 16 characters passed once, and PyJWT then warned InsecureKeyLengthWarning on every
# token: HS256 wants 32 bytes. "é" * 15 is 15 characters but 30 bytes.
@pytest.mark.parametrize("secret", ["", "s3cr3t-xyz", "0123456789abcdef", "x" * 31, "é" * 15])
def test_jwt_mode_with_short_secret(tmp_path: Path, secret: str) -> None:
    message = load_error(tmp_path, f'[auth]\nmode = "jwt"\nsecret = "{secret}"\n')
    assert "auth.secret" in message
    assert "32 bytes" in message
    # The value of a secret is named without being shown.
    if secret:
        assert secret not in message
    assert "<hidden>" in message


def test_a_secret_is_checked_in_development_mode_too(tmp_path: Path) -> None:
    # `sfu token` and the admin API use it there as well.
    message = load_error(tmp_path, '[auth]\nsecret = "0123456789abcdef"\n')
    assert "auth.secret" in message and "32 bytes" in message


def test_the_shortest_secret_allowed_is_one_pyjwt_accepts_without_warning(
    tmp_path: Path,
) -> None:
    config = load(write(tmp_path, f'[auth]\nmode = "jwt"\nsecret = "{SECRET}"\n'), env={})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        token = mint_token(config.auth.secret, room="r", identity="i")
        assert verify_token(config.auth.secret, token, "r").identity == "i"


def test_bad_auth_mode(tmp_path: Path) -> None:
    message = load_error(tmp_path, '[auth]\nmode = "none"\n')
    assert "auth.mode" in message
    assert "'none'" in message


@pytest.mark.parametrize("ip", ["10.0.0.256", "localhost", "", "10.0.0.1/24", "1.2.3"])
def test_bad_listen_ip(tmp_path: Path, ip: str) -> None:
    message = load_error(tmp_path, f'[rtc]\nlisten_ips = ["127.0.0.1", "{ip}"]\n')
    assert "rtc.listen_ips" in message
    assert repr(ip) in message


def test_empty_listen_ips(tmp_path: Path) -> None:
    message = load_error(tmp_path, "[rtc]\nlisten_ips = []\n")
    assert "rtc.listen_ips" in message
    assert "[]" in message


def test_bad_announced_ip(tmp_path: Path) -> None:
    message = load_error(tmp_path, '[rtc]\nannounced_ip = "sfu.example.org"\n')
    assert "rtc.announced_ip" in message
    assert "'sfu.example.org'" in message
    config = load(write(tmp_path, '[rtc]\nannounced_ip = "2001:db8::1"\n'), env={})
    assert config.rtc.announced_ip == "2001:db8::1"


def test_port_min_above_port_max(tmp_path: Path) -> None:
    message = load_error(tmp_path, "[rtc]\nport_min = 50000\nport_max = 40000\n")
    assert "rtc.port_min" in message
    assert "rtc.port_max" in message
    assert "50000" in message
    assert "40000" in message


@pytest.mark.parametrize(("port_min", "port_max"), [(1023, 2000), (40000, 65536), (0, 0)])
def test_port_range_out_of_bounds(tmp_path: Path, port_min: int, port_max: int) -> None:
    message = load_error(tmp_path, f"[rtc]\nport_min = {port_min}\nport_max = {port_max}\n")
    assert "rtc.port_min" in message
    assert str(port_min) in message
    assert str(port_max) in message


def test_single_port_range(tmp_path: Path) -> None:
    config = load(write(tmp_path, "[rtc]\nport_min = 40000\nport_max = 40000\n"), env={})
    assert (config.rtc.port_min, config.rtc.port_max) == (40000, 40000)


@pytest.mark.parametrize("forwarder", ["rust", "Cython", ""])
def test_bad_forwarder(tmp_path: Path, forwarder: str) -> None:
    message = load_error(tmp_path, f'[rtc]\nforwarder = "{forwarder}"\n')
    assert "rtc.forwarder" in message
    assert repr(forwarder) in message


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("server", "max_message_bytes", 1023),
        ("rtc", "keyframe_request_interval_ms", -1),
        ("rooms", "max_participants", 0),
        ("rooms", "max_participants", 1001),
    ],
)
def test_other_bounds(tmp_path: Path, section: str, key: str, value: int) -> None:
    message = load_error(tmp_path, f"[{section}]\n{key} = {value}\n")
    assert f"{section}.{key}" in message
    assert str(value) in message


# -- files --------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.toml"
    with pytest.raises(ConfigError) as info:
        load(path, env={})
    assert str(path) in str(info.value)


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load(tmp_path, env={})


@pytest.mark.parametrize(
    "text", ["[server\n", "[server]\nport = \n", "[server]\nport = 1\nport = 2\n", "x = = 1\n"]
)
def test_invalid_toml(tmp_path: Path, text: str) -> None:
    message = load_error(tmp_path, text)
    assert "sfu.toml" in message


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "sfu.toml"
    path.write_bytes(b'[server]\nhost = "\xff"\n')
    with pytest.raises(ConfigError) as info:
        load(path, env={})
    assert str(path) in str(info.value)


def test_utf8_file_is_read_as_utf8(tmp_path: Path) -> None:
    path = tmp_path / "sfu.toml"
    path.write_bytes('[auth]\nmode = "jwt"\nsecret = "ünïcödé-sécret-ünïcödé-sécret"\n'.encode())
    assert load(path, env={}).auth.secret == "ünïcödé-sécret-ünïcödé-sécret"


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=200))
def test_any_file_loads_or_raises_config_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "fuzz.toml"
    path.write_bytes(content)
    with contextlib.suppress(ConfigError):
        load(path, env={})


SECTION_KEYS = [
    (section, key)
    for section, values in dataclasses.asdict(Config()).items()
    for key in values
]


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.sampled_from(SECTION_KEYS),
    st.one_of(
        st.integers(min_value=-(2**63), max_value=2**63 - 1).map(str),
        st.booleans().map(lambda b: str(b).lower()),
        # Characters a TOML basic string holds unescaped.
        st.text(
            st.characters(codec="utf-8", exclude_categories=["Cc"], exclude_characters='"\\'),
            max_size=20,
        ).map(
            lambda s: f'"{s}"'
        ),
        st.floats(allow_nan=False, allow_infinity=False).map(repr),
        st.lists(st.sampled_from(['"127.0.0.1"', '"::1"', '"x"', "1"]), max_size=3).map(
            lambda items: "[" + ", ".join(items) + "]"
        ),
    ),
)
def test_any_value_loads_or_raises_config_error_naming_the_key(
    tmp_path: Path, section_key: tuple[str, str], value: str
) -> None:
    section, key = section_key
    path = tmp_path / "fuzz.toml"
    path.write_text(f"[{section}]\n{key} = {value}\n", encoding="utf-8")
    try:
        config = load(path, env={})
    except ConfigError as exc:
        # Setting auth.mode to "jwt" is fine in itself: the default secret is what fails.
        named = "auth.secret" if (section, key, value) == ("auth", "mode", '"jwt"') else key
        assert named in str(exc)
        return
    assert dataclasses.asdict(config)[section][key] == tomllib.loads(path.read_text())[section][key]


@settings(max_examples=300)
@given(
    st.sampled_from(SECTION_KEYS),
    st.text(st.characters(codec="utf-8"), max_size=30),
)
def test_any_env_value_loads_or_raises_config_error(
    section_key: tuple[str, str], value: str
) -> None:
    section, key = section_key
    with contextlib.suppress(ConfigError):
        load(None, env={f"SFU_{section}_{key}".upper(): value})


@pytest.mark.parametrize("stun", ['["10.0.0.1:3478"]', '["10.0.0.1", "10.0.0.2:3479"]',
                                  '["10.0.0.1:3478", "10.0.0.2:70000"]'])
def test_the_nat_test_needs_both_stun_addresses_with_ports(tmp_path: Path, stun: str) -> None:
    message = load_error(tmp_path, f"[diagnostics]\nstun = {stun}\n")
    assert message.startswith("diagnostics.stun = ") and "other host:port" in message


def test_the_nat_test_takes_a_primary_and_an_other_address(tmp_path: Path) -> None:
    stun = ["10.0.0.1:3478", "[2001:db8::2]:3479"]
    config = load(write(tmp_path, f"[diagnostics]\nstun = {stun!r}\n".replace("'", '"')), env={})
    assert config.diagnostics.stun == stun
