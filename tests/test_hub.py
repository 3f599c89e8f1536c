"""Hub loading against a real HTTP server on 127.0.0.1 serving the Hub's file layout (HF_ENDPOINT)."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from tirex import ModelConfig, TiRexModel

from hub_server import HubServer


@pytest.fixture()
def hub(tmp_path, fixture_dir):
    root = tmp_path / "hub"
    ours = TiRexModel(ModelConfig(embed_dim=16, num_heads=2, num_blocks=1, input_ff_dim=32, context_length=64))
    ours.save_pretrained(root / "acme" / "tiny")
    (root / "NX-AI" / "TiRex").mkdir(parents=True)
    shutil.copy(fixture_dir / "official" / "model.ckpt", root / "NX-AI" / "TiRex" / "model.ckpt")
    (root / "acme" / "empty").mkdir(parents=True)
    with HubServer(root) as server:
        server.cache = tmp_path / "cache"
        yield server


def load_in_subprocess(server, source, extra_env=None, **kwargs):
    """Run load_model in a fresh interpreter so HF_ENDPOINT is read the way users set it."""
    code = textwrap.dedent(f"""
        import json, torch
        from tirex import load_model
        try:
            m = load_model({source!r}, **{kwargs!r})
            q, _ = m.forecast(torch.arange(100.0), prediction_length=3)
            print(json.dumps({{"ok": True, "embed": m.config.embed_dim, "q": q[0, :, 4].tolist()}}))
        except Exception as exc:
            print(json.dumps({{"ok": False, "type": type(exc).__name__, "msg": str(exc)}}))
    """)
    env = {**os.environ, "HF_ENDPOINT": server.url, "HF_HUB_CACHE": str(server.cache), "HF_HUB_DISABLE_XET": "1",
           "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_ETAG_TIMEOUT": "5", "HF_HUB_DOWNLOAD_TIMEOUT": "5"}
    env.pop("HF_HUB_OFFLINE", None)
    env.update(extra_env or {})
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.stdout.strip(), out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_our_format_repo(hub):
    res = load_in_subprocess(hub, "acme/tiny")
    assert res["ok"], res
    assert res["embed"] == 16
    assert any("/acme/tiny/resolve/main/config.json" in p for _, p in hub.requests)


def test_published_layout_repo_is_converted(hub, fixture_dir):
    res = load_in_subprocess(hub, "NX-AI/TiRex")
    assert res["ok"], res
    from tirex import load_model

    local = load_model(fixture_dir / "official" / "model.ckpt")
    q, _ = local.forecast(torch.arange(100.0), prediction_length=3)
    assert res["q"] == pytest.approx(q[0, :, 4].tolist(), abs=1e-5)


def test_cache_serves_offline(hub):
    assert load_in_subprocess(hub, "acme/tiny")["ok"]
    hub.requests.clear()
    res = load_in_subprocess(hub, "acme/tiny", extra_env={"HF_HUB_OFFLINE": "1"})
    assert res["ok"], res
    assert hub.requests == []


def test_offline_without_cache_is_a_clear_error(hub):
    res = load_in_subprocess(hub, "acme/tiny", extra_env={"HF_HUB_OFFLINE": "1"})
    assert not res["ok"] and "not in the cache" in res["msg"]


def test_missing_repo_revision_and_files(hub):
    res = load_in_subprocess(hub, "acme/does-not-exist")
    assert not res["ok"] and res["type"] == "ValueError" and "not found" in res["msg"]
    res = load_in_subprocess(hub, "acme/tiny", revision="v9")
    assert not res["ok"] and "revision" in res["msg"]
    res = load_in_subprocess(hub, "acme/empty")
    assert not res["ok"] and "model.ckpt" in res["msg"]


def test_download_cut_off_midway(hub):
    hub.cut_downloads["model.safetensors"] = 100  # every attempt is cut off
    res = load_in_subprocess(hub, "acme/tiny")
    assert not res["ok"]
    assert "acme/tiny" in res["msg"]
    # nothing half-written is taken for a good file: once the server recovers, loading works
    hub.cut_downloads.clear()
    res = load_in_subprocess(hub, "acme/tiny")
    assert res["ok"], res


def test_download_cut_off_once_is_resumed(hub):
    hub.cut_downloads["model.safetensors"] = 1
    res = load_in_subprocess(hub, "acme/tiny")
    assert res["ok"], res
    gets = [p for m, p in hub.requests if m == "GET" and p.endswith("model.safetensors")]
    assert len(gets) >= 2


def test_push_to_hub_then_load(hub, tmp_path):
    """push_to_hub writes our format through the Hub API; load_model reads it back from the Hub."""
    code = textwrap.dedent("""
        import torch
        from tirex import ModelConfig, TiRexModel
        torch.manual_seed(3)
        m = TiRexModel(ModelConfig(embed_dim=16, num_heads=2, num_blocks=1, input_ff_dim=32, context_length=64))
        print(m.push_to_hub("acme/pushed", token="hf_test_token"))
        m.save_pretrained(%r)
    """) % str(tmp_path / "local")
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_CACHE": str(hub.cache), "HF_HUB_DISABLE_XET": "1",
           "HF_HUB_DISABLE_TELEMETRY": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in (hub.root / "acme" / "pushed").iterdir()) == ["config.json", "model.safetensors"]
    from safetensors.torch import load_file  # bytes may differ: safetensors orders its metadata freely

    pushed, local = load_file(hub.root / "acme" / "pushed" / "model.safetensors"), load_file(tmp_path / "local" / "model.safetensors")
    assert pushed.keys() == local.keys() and all(torch.equal(pushed[k], local[k]) for k in local)
    res = load_in_subprocess(hub, "acme/pushed")
    assert res["ok"], res


def test_unreachable_hub_fails_at_once_without_retries(tmp_path):
    """Issue 15, item 10: an offline load_model("NX-AI/TiRex") spent 23 s in 12 retry messages before failing."""
    import socket

    with socket.socket() as sock:  # a port on 127.0.0.1 with nothing listening: connections are refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code = "from tirex import load_model\nload_model('NX-AI/TiRex')"
    env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{port}", "HF_HUB_CACHE": str(tmp_path / "cache"),
           "HF_HUB_DISABLE_TELEMETRY": "1"}
    env.pop("HF_HUB_OFFLINE", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode != 0
    assert "is unreachable" in out.stderr and "not in the cache" in out.stderr
    assert "Retrying" not in out.stderr and "Retry" not in out.stdout


def test_unreachable_hub_still_serves_the_cache(hub):
    assert load_in_subprocess(hub, "acme/tiny")["ok"]
    hub.__exit__(None, None, None)  # the Hub goes away; the cached files still load, with no retries
    res = load_in_subprocess(hub, "acme/tiny")
    assert res["ok"], res
