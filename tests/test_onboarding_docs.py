"""The docs a newcomer follows: docs/config.md is generated from barlow_jax/defaults.py (a key added,
renamed or given another default without updating it fails here), and every command and
link of the onboarding docs names something that exists."""

import os
import re

import pytest

from barlow_jax import config_doc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ONBOARDING = ["README.md", "docs/quickstart.md", "docs/troubleshooting.md", "docs/config.md",
              "docs/reproduction.md"]


def _read(rel):
    with open(os.path.join(ROOT, rel), encoding="utf-8") as f:
        return f.read()


def test_every_base_key_has_a_meaning_and_every_meaning_a_key():
    missing, stale = config_doc.drift()
    assert not missing, f"keys of barlow_jax/defaults.py without a meaning in config_doc.py: {missing}"
    assert not stale, f"meanings in config_doc.py for keys base.py lacks: {stale}"


def test_config_reference_is_up_to_date():
    assert _read("docs/config.md") == config_doc.render(), (
        "docs/config.md is stale: run python -m barlow_jax.config_doc")
    assert config_doc.main(["--check"]) == 0


def test_config_reference_lists_every_key_with_its_default():
    text = _read("docs/config.md")
    for key, value in config_doc.defaults():
        shown = key.split(".", 3)[3] if key.startswith("data.augment.") else key
        row = re.search(rf"^\| `{re.escape(shown)}` \| (.*?) \|", text, re.M)
        assert row, key
        assert repr(value)[:12] in row.group(1) or isinstance(value, tuple), (key, row.group(1))


@pytest.mark.parametrize("doc", ONBOARDING)
def test_links_and_configs_named_in_the_docs_exist(doc):
    text = _read(doc)
    base = os.path.dirname(os.path.join(ROOT, doc))
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if target.startswith(("http://", "https://", "mailto:")) or target.endswith(".png"):
            continue
        assert os.path.exists(os.path.join(base, target)), f"{doc} links to missing {target}"
    for config in set(re.findall(r"configs/[\w]+\.py", text)):
        assert os.path.exists(os.path.join(ROOT, config)), f"{doc} names missing {config}"
    for module in set(re.findall(r"python -m (barlow_jax[\w.]*)", text)):
        path = os.path.join(ROOT, *module.split("."))
        assert os.path.exists(path + ".py") or os.path.isdir(path), f"{doc}: {module}"
    for extra in set(re.findall(r'\.\[([\w,]+)\]', text)):
        for name in extra.split(","):
            assert f'"{name}":' in _read("setup.py"), f"{doc} installs unknown extra {name}"


def test_troubleshooting_covers_the_issue_topics():
    text = _read("docs/troubleshooting.md")
    for topic in ("JAX runs on the CPU", "NaN", "Collapse", "Out of memory", "Slow input",
                  "loss at the start", "Small batches"):
        assert topic in text, topic
    for batch, lr in ((128, 0.7), (256, 0.4), (512, 0.3), (1024, 0.25), (2048, 0.2)):
        assert re.search(rf"^\| {batch} \| {lr} \|", text, re.M), (batch, lr)
    assert "1,337" in text   # lambda * D^2 / N for D = 8192, N = 256: thousands at the start
