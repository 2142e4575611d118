"""Provisioning: CA and coordinator certificate, per-site bundles, 0600 keys, add/revoke touching no other site."""

from __future__ import annotations

import hashlib
import stat

import pytest

from fedhaven.server.provision import CoordinatorConfig, StateDir, add_site, init_state, revoke_site
from fedhaven.shared.config import ConfigError
from fedhaven.shared.crypto import cert_names, issued_by, make_site_keypair, private_key_problems


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _digest(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture
def state(tmp_path):
    st = StateDir(tmp_path / "coord")
    init_state(state=st, cfg=CoordinatorConfig(names=("coord.example.org",), ips=("10.0.0.5",),
                                               public_address="coord.example.org:9092"))
    return st


def test_init_writes_a_ca_and_a_certificate_for_every_name(state):
    assert _mode(state.ca_key) == 0o600 and _mode(state.server_key) == 0o600 and _mode(state.secret_file) == 0o600
    dns, ips = cert_names(state.server_cert.read_bytes())
    assert {"coord.example.org", "localhost"} <= set(dns)
    assert {"10.0.0.5", "127.0.0.1"} <= set(ips)  # 127.0.0.1: the SuperLink dials itself there
    assert issued_by(state.server_cert.read_bytes(), state.ca_cert.read_bytes())
    with pytest.raises(ConfigError, match="lock every site out"):
        init_state(state=state, cfg=CoordinatorConfig())


def test_sites_get_bundles_and_add_or_revoke_touches_no_other(state, tmp_path):
    rec_a, bundle_a = add_site(state=state, name="hospital-a")  # key pair generated for the site
    assert _mode(bundle_a / "site.key") == 0o600 and private_key_problems(bundle_a / "site.key") == []
    assert (bundle_a / "ca.pem").read_bytes() == state.ca_cert.read_bytes()
    assert 'address = "coord.example.org:9092"' in (bundle_a / "site.toml").read_text()
    before = _digest(bundle_a)

    _, public = make_site_keypair()  # the site generated its own key and sent the public half
    (tmp_path / "b.pub").write_bytes(public)
    rec_b, bundle_b = add_site(state=state, name="bank-b", public_key=public)
    assert not (bundle_b / "site.key").exists() and rec_b.fingerprint != rec_a.fingerprint
    assert _digest(bundle_a) == before

    revoke_site(state=state, name="bank-b")
    sites = state.sites()
    assert sites["bank-b"].status == "revoked" and sites["hospital-a"] == rec_a
    assert _digest(bundle_a) == before

    with pytest.raises(ConfigError, match="already exists"):
        add_site(state=state, name="hospital-a")
    with pytest.raises(ConfigError, match="already belongs to site 'hospital-a'"):
        add_site(state=state, name="clinic-c", public_key=(bundle_a / "site.pub").read_bytes())
    with pytest.raises(ConfigError, match="not an OpenSSH public key"):
        add_site(state=state, name="clinic-d", public_key=b"ssh-rsa nonsense")
    with pytest.raises(ConfigError, match="no site named"):
        revoke_site(state=state, name="nobody")


def test_private_key_checks(tmp_path):
    private, _ = make_site_keypair()
    key = tmp_path / "site.key"
    key.write_bytes(private)
    key.chmod(0o644)
    assert any("readable by others" in p and "chmod 600" in p for p in private_key_problems(key))
    assert private_key_problems(tmp_path / "missing.key") == [f"{tmp_path / 'missing.key'}: private key not found"]


def test_cli_never_prints_private_keys(tmp_path, capfd):
    from fedhaven.client.cli import main as client_main
    from fedhaven.server.cli import main as server_main

    st = str(tmp_path / "coord")
    assert server_main(["init", "--state-dir", st, "--name", "coord.example.org"]) == 0
    assert server_main(["site", "add", "hospital-a", "--state-dir", st]) == 0
    assert client_main(["keygen", "--out", str(tmp_path / "site")]) == 0
    assert server_main(["site", "list", "--state-dir", st]) == 0
    out, err = capfd.readouterr()
    assert "PRIVATE KEY" not in out + err and "hospital-a" in out + err
    key = (tmp_path / "coord" / "sites" / "hospital-a" / "site.key").read_text()
    assert key.splitlines()[1] not in out + err
