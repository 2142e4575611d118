"""The guides' commands run (issue #25): every command in a shell block of README.md or docs/*.md runs here, against
keys, a coordinator's state, a site and its ledger this test provisions in a temporary folder, or is listed in
SKIPPED with why it cannot; a command in neither, or a table entry no document shows, fails. Every relative link and
anchor resolves.

Commands run in-process (`main(argv)` of fl-server, fl-client and fl-sim; `python -m` and `python -c` in this
interpreter): a console script in a subprocess would pay the torch import once per command."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import runpy
import shlex
import shutil
import sys
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
GUIDES = {"operator": "fl-server init", "site": "fl-client keygen", "privacy-officer": "fl-client ledger verify",
          "researcher": "fl-sim list"}
SHELL = {"sh", "bash", "shell", "console"}

#: Commands the documents show that cannot run in a test, and why.
SKIPPED = {
    # README
    "make sim": "minutes: 40 rounds on 10 sites with Ray (tests/sim/test_simulation.py runs 3 digits sites)",
    "make test": "the test suite itself",
    # docs/operator.md
    "fl-server start --state-dir /var/lib/fedhaven": "runs the coordinator in the foreground until stopped "
                                                      "(tests/deploy starts real coordinators on loopback)",
    "fl-server run run.toml --state-dir /var/lib/fedhaven": "needs a running coordinator and sites (tests/deploy)",
    "fl-server stop --run RUN_ID --state-dir ...": "needs a running coordinator and run (tests/deploy)",
    "fl-server run --resume run-RUN_ID --state-dir ...": "needs a coordinator that crashed mid-run (tests/faults)",
    # docs/site.md
    "fl-client start --config /etc/fedhaven/site.toml": "joins a running federation and serves until stopped "
                                                        "(tests/deploy)",
    "useradd --system --home /var/lib/fedhaven-site fedhaven-site": "creates a system account (root, systemd host)",
    "install -d -o fedhaven-site -g fedhaven-site -m 0700 /etc/fedhaven": "needs the fedhaven-site account (root)",
    "sudo -u fedhaven-site /opt/fedhaven/.venv/bin/fl-client keygen --out /etc/fedhaven":
        "needs root and the fedhaven-site account; the same keygen runs here without sudo",
    "install -d -o fedhaven-site -g fedhaven-site -m 0700 /var/lib/fedhaven-site /var/lib/fedhaven-site-anchor":
        "needs the fedhaven-site account (root)",
    "sudo -u fedhaven-site /opt/fedhaven/.venv/bin/fl-client ledger init --config /etc/fedhaven/site.toml":
        "needs root and the fedhaven-site account; the same ledger init runs here without sudo",
    "systemctl enable --now fedhaven-site": "needs systemd and root (the shipped unit's site trains in "
                                            "tests/deploy/test_systemd_site.py, make trust)",
    # docs/researcher.md
    ".venv/bin/fl-sim run digits": "about a minute with Ray (tests/sim/test_simulation.py runs 2 digits rounds)",
    ".venv/bin/fl-sim run mnist --sites 20 --rounds 30 --partition dirichlet:0.3 --seed 1": "a long simulation",
    ".venv/bin/fl-sim run mnist train.lr=0.5 dp.target_epsilon=1.0 strategy.name=fedprox": "a long simulation",
    ".venv/bin/fl-sim run mnist --ray-address 10.0.0.5:6379": "needs a Ray cluster at 10.0.0.5",
    ".venv/bin/fl-sim compare runs/digits-3-sites-iid-A runs/digits-3-sites-iid-B --out compare.png":
        "needs two finished runs (tests/sim/test_compare.py compares two run directories)",
    "tensorboard --logdir runs": "a server that runs until stopped",
    "MLFLOW_TRACKING_URI=file:runs/mlruns MLFLOW_ALLOW_FILE_STORE=true mlflow runs list --experiment-id ID":
        "needs a finished run's MLflow experiment id (tests/sim/test_simulation.py lists a real run with it)",
    "make bench": "about an hour",
    "make bench-quick": "about 10 minutes",
    ".venv/bin/python -m fedhaven.sim.bench.accuracy --recipe new old --partition iid dirichlet:0.3 --epsilon 1 3 8":
        "36 full simulations",
}


@dataclass(frozen=True)
class Run:
    """How the test runs one documented command: in which folder, with what exit code, after what setup.

    `argv`: what runs instead of the command as written, where it shows a placeholder or an optional part."""

    cwd: str = "."
    code: int = 0
    argv: tuple[str, ...] | None = None
    before: Callable[[Path], None] | None = None
    check: Callable[[str, str], None] | None = None  # (stdout, stderr)


SIM_RUN = "digits-3-sites-iid-20261207-000000"


def _digits_images(root: Path) -> None:
    """A small ImageFolder tree (<class>/<image>.png), as a site's data folder."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i in range(120):
        folder = root / "images" / str(digits.target[i])
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((digits.images[i] * 15).astype(np.uint8)).save(folder / f"{i}.png")


def _send_public_key(root: Path) -> None:
    """The site's IT sends site.pub to the operator."""
    shutil.copy(root / "etc" / "site.pub", root / "operator" / "hospital-a.pub")


def _second_site(root: Path) -> None:
    from fedhaven.server.cli import main as fl_server

    assert fl_server(["site", "add", "hospital-b", "--state-dir", str(root / "coordinator")]) == 0


def _bundle_to_site(root: Path) -> None:
    """'put the operator's ca.pem and site.toml beside it, then edit site.toml: the data path and the policy'."""
    bundle = root / "coordinator" / "sites" / "hospital-a"
    for name in ("ca.pem", "site.toml"):
        shutil.copy(bundle / name, root / "etc" / name)
    toml = root / "etc" / "site.toml"
    text = toml.read_text()
    assert 'path = "/path/to/training/images"' in text and "image_size = 224" in text, text
    toml.write_text(text.replace("/path/to/training/images", str(root / "images"))
                    .replace("image_size = 224", "image_size = 28"))


def _experiment(root: Path) -> None:
    (root / "my-experiment.toml").write_text('sites = 3\nrounds = 2\n[data]\nsource = "digits"\n')


def _simulated_site(root: Path) -> None:
    """A simulated site's ledger as fl-sim starts it (unsigned: simulated sites have no key)."""
    from fedhaven.client.ledger import Ledger

    Ledger.in_dir(root / "runs" / SIM_RUN / "sites" / "site-00").init(site="site-00")


HISTORY = [[1.1, 0.01, 120], [1.3, 0.02, 60]]


def _privacy_json(root: Path) -> None:
    """A run's privacy.json row, its epsilon computed by fedhaven's accountant."""
    from fedhaven.shared.accounting import PrivacyHistory, epsilon

    hist = PrivacyHistory()
    for noise, rate, steps in HISTORY:
        hist = hist.add(noise_multiplier=noise, sample_rate=rate, steps=steps)
    site = {"epsilon": epsilon(history=hist, delta=1e-5), "delta": 1e-5, "history": HISTORY, "history_complete": True}
    (root / "run").mkdir()
    (root / "run" / "privacy.json").write_text(json.dumps({"sites": {"site-00": site}}))


def _recomputed_equals_reported(out: str, err: str) -> None:
    recomputed, reported = (float(x) for x in out.split())
    assert math.isclose(recomputed, reported, rel_tol=1e-9), out


def _says(*words: str) -> Callable[[str, str], None]:
    """The command's output (stdout and stderr: messages go to stderr) holds each of `words`."""
    def check(out: str, err: str) -> None:
        assert all(w in out + err for w in words), words
    return check


def _json_check(**expected: object) -> Callable[[str, str], None]:
    """stdout is one JSON document (and nothing else) with these values."""
    def check(out: str, err: str) -> None:
        doc = json.loads(out)
        assert {k: doc.get(k) for k in expected} == expected, doc
    return check


#: Commands that run here, in this order (the site's IT and the operator take turns, as they would).
RUN: dict[str, Run] = {
    # the site makes its key and sends site.pub; the operator starts a coordinator's state and registers it
    "fl-client keygen --out /etc/fedhaven": Run(),
    "fl-server init --state-dir /var/lib/fedhaven --name coord.example.org --ip 10.0.0.5":
        Run(cwd="operator", before=_send_public_key),
    "fl-server site add hospital-a --public-key hospital-a.pub --state-dir /var/lib/fedhaven": Run(cwd="operator"),
    "fl-server site revoke hospital-b --state-dir /var/lib/fedhaven": Run(cwd="operator", before=_second_site),
    "fl-server site list --state-dir /var/lib/fedhaven": Run(cwd="operator", check=_says("hospital-a", "revoked")),
    "fl-server check --state-dir /var/lib/fedhaven": Run(cwd="operator"),
    "fl-server status --state-dir /var/lib/fedhaven": Run(cwd="operator", code=3, check=_says("not running")),
    "fl-server --version": Run(check=_says("fl-server", "Flower")),
    "fl-server status --json --state-dir /var/lib/fedhaven":
        Run(code=3, check=_json_check(ok=False, exit_code=3, error="not_running")),
    "FEDHAVEN_STATE_DIR=/var/lib/fedhaven fl-server site list --json": Run(check=_json_check(ok=True)),
    # the site finishes its bundle, starts its ledger and checks everything
    "fl-client ledger init --config /etc/fedhaven/site.toml": Run(before=_bundle_to_site),
    "fl-client check --config /etc/fedhaven/site.toml": Run(check=_says("check passed", "120 images")),
    "fl-client check --config /etc/fedhaven/site.toml --report": Run(check=_says("data quality", "check passed")),
    "FEDHAVEN_SITE_CONFIG=/etc/fedhaven/site.toml fl-client check --json": Run(check=_json_check(ok=True)),
    "fl-client ledger show --config /etc/fedhaven/site.toml": Run(check=_says("init")),
    "fl-client ledger verify --config /etc/fedhaven/site.toml": Run(check=_says("verified")),
    # the privacy officer, at the site's folder (site.toml, site.pub and its relative state_dir "state")
    "fl-client ledger verify --config site.toml": Run(cwd="etc", check=_says("verified", "signed")),
    "fl-client ledger init --config site.toml": Run(cwd="etc", code=1),  # "refused if a ledger or anchor exists"
    "fl-client ledger show --config site.toml": Run(cwd="etc"),
    "fl-client ledger verify --state-dir state --public-key site.pub": Run(cwd="etc", check=_says("site.pub")),
    "fl-client ledger verify --state-dir runs/<run>/sites/site-00":
        Run(argv=("fl-client", "ledger", "verify", "--state-dir", f"runs/{SIM_RUN}/sites/site-00"),
            before=_simulated_site, check=_says("unsigned")),
    "fl-client ledger reset --config site.toml --reason \"anchor disk replaced\" --keep-budget":
        Run(cwd="etc", check=_says("budget kept")),
    "fl-client ledger reset --config site.toml --reason \"restored from backup, ticket 42\" "
    "[--accept-witness SEQ:HASH]":
        Run(cwd="etc", argv=("fl-client", "ledger", "reset", "--config", "site.toml", "--reason",
                             "restored from backup, ticket 42"), check=_says("FRESH BUDGET")),
    "python -c \"import json; from opacus.accountants import RDPAccountant; s = json.load(open('privacy.json'))"
    "['sites']['site-00']; a = RDPAccountant(); a.history = [tuple(h) for h in s['history']]; "
    "print(a.get_epsilon(s['delta']), s['epsilon'])\"":
        Run(cwd="run", before=_privacy_json, check=_recomputed_equals_reported),
    # the researcher
    ".venv/bin/fl-sim list": Run(check=_says("digits", "mnist")),
    ".venv/bin/fl-sim check my-experiment.toml": Run(before=_experiment, check=_says("check passed")),
    ".venv/bin/python -m fedhaven.shared.recipe --epsilon 3 --sites 10 --site-size 6000": Run(check=_says("rounds = ")),
}

#: Where the documents' absolute paths land under the test's folder.
PATHS = {"/var/lib/fedhaven": "coordinator", "/etc/fedhaven": "etc"}


def documents() -> list[Path]:
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


def fences(text: str) -> Iterator[tuple[str, list[str]]]:
    """(info string, lines) of every fenced block; an unclosed fence raises."""
    lines, i = text.splitlines(), 0
    while i < len(lines):
        m = re.match(r"^(\s*)(```+|~~~+)(.*)$", lines[i])
        if not m:
            i += 1
            continue
        fence, info, body = m.group(2), m.group(3).strip(), []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i])
            i += 1
        if i == len(lines):
            raise AssertionError(f"unclosed fence {fence}{info}")
        if lines[i].strip() != fence:
            raise AssertionError(f"text after a closing fence: {lines[i]!r}")
        yield info, body
        i += 1


def _strip_comment(line: str) -> str:
    """The line up to its first unquoted `#` that starts a word (a shell comment)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def commands(text: str) -> list[str]:
    """Every command of the shell blocks: comments dropped, `\\` continuations joined, blanks collapsed."""
    found: list[str] = []
    for info, body in fences(text):
        if not info or info.split()[0] not in SHELL:
            continue
        pending = ""
        for raw in body:
            line = _strip_comment(raw.removeprefix("$ ")).rstrip()
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            line = " ".join((pending + line).split())
            pending = ""
            if line:
                found.append(line)
    return found


def documented() -> dict[str, list[str]]:
    """Each command the documents show, with the documents that show it."""
    shown: dict[str, list[str]] = {}
    for doc in documents():
        for cmd in commands(doc.read_text()):
            shown.setdefault(cmd, []).append(doc.relative_to(ROOT).as_posix())
    return shown


def test_every_fence_is_closed_and_names_its_language():
    """An untagged block could hold commands no test extracts: tag output `text`."""
    for doc in documents():
        for info, body in fences(doc.read_text()):
            assert info, f"{doc.relative_to(ROOT)}: a fenced block without a language: {body[:2]}"


def test_every_documented_command_is_run_or_skipped_with_a_reason():
    shown = documented()
    unlisted = sorted(set(shown) - set(RUN) - set(SKIPPED))
    assert not unlisted, ("commands shown in the docs that tests/test_docs.py neither runs (RUN) nor lists with a "
                          "reason (SKIPPED): " + "; ".join(f"{c!r} ({', '.join(shown[c])})" for c in unlisted))
    stale = sorted((set(RUN) | set(SKIPPED)) - set(shown))
    assert not stale, f"RUN/SKIPPED entries no document shows any more: {stale}"
    assert not set(RUN) & set(SKIPPED)
    assert all(reason.strip() for reason in SKIPPED.values())


def test_readme_keeps_the_two_commands_and_each_guide_starts_from_its_persons_first_command():
    text = README.read_text()
    info, first = next(fences(text))
    assert info == "sh" and commands(f"```sh\n{chr(10).join(first)}\n```") == ["make sim", "make test"]
    assert len(text.splitlines()) <= 200, "README is the two commands and a short tour: guides go to docs/"
    for guide, first_command in GUIDES.items():
        path = ROOT / "docs" / f"{guide}.md"
        first_block = next(body for info, body in fences(path.read_text()) if info in SHELL)
        opening = commands("```sh\n" + "\n".join(first_block) + "\n```")[0]
        assert opening.removeprefix(".venv/bin/").startswith(first_command), (guide, opening)


def test_other_blocks_parse():
    """TOML blocks are TOML and Python blocks compile (they are fragments a reader copies)."""
    for doc in documents():
        for info, body in fences(doc.read_text()):
            if info == "toml":
                tomllib.loads("\n".join(body))
            elif info == "python":
                compile("\n".join(body), str(doc), "exec")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    in_fence = False
    for line in path.read_text().splitlines():
        if re.match(r"^\s*(```|~~~)", line):
            in_fence = not in_fence
        m = None if in_fence else re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            slug = _slug(m.group(1))
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def _links(text: str) -> list[str]:
    text = re.sub(r"^\s*(```|~~~).*?^\s*\1", "", text, flags=re.S | re.M)  # fenced blocks
    text = re.sub(r"`[^`\n]*`", "", text)  # code spans
    return re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", text)


def test_every_relative_link_and_anchor_resolves():
    problems = []
    for doc in documents():
        for target in _links(doc.read_text()):
            if re.match(r"^[a-z]+:", target):
                continue
            path_part, _, anchor = target.partition("#")
            path = (doc.parent / path_part).resolve() if path_part else doc
            where = f"{doc.relative_to(ROOT)} -> {target}"
            if not path.exists():
                problems.append(f"{where}: no such file")
            elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
                problems.append(f"{where}: no heading with that anchor")
    assert not problems, problems


@contextlib.contextmanager
def _in(cwd: Path, env: dict[str, str]) -> Iterator[None]:
    old_cwd, old_env = Path.cwd(), dict(os.environ)
    old_umask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(old_umask)
    os.chdir(cwd)
    os.environ.update(env)
    try:
        yield
    finally:
        os.chdir(old_cwd)
        os.environ.clear()
        os.environ.update(old_env)
        os.umask(old_umask)  # the commands set umask 077 for themselves, not for the tests after this one


def _invoke(argv: list[str]) -> int:
    """Run one command in this interpreter; its exit code."""
    from fedhaven.client.cli import main as fl_client
    from fedhaven.server.cli import main as fl_server
    from fedhaven.sim.cli import main as fl_sim

    prog, args = argv[0].removeprefix(".venv/bin/"), argv[1:]
    mains = {"fl-server": fl_server, "fl-client": fl_client, "fl-sim": fl_sim}
    try:
        if prog in mains:
            return mains[prog](args)
        if prog == "python" and args[0] == "-c":
            exec(compile(args[1], "<documented python -c>", "exec"), {"__name__": "__main__"})
            return 0
        if prog == "python" and args[0] == "-m":
            old = sys.argv
            sys.argv = [args[1], *args[2:]]
            try:
                runpy.run_module(args[1], run_name="__main__", alter_sys=True)
            finally:
                sys.argv = old
            return 0
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    raise AssertionError(f"no in-process runner for {prog!r}: run it some other way or list it in SKIPPED")


def _argv(cmd: str, run: Run, root: Path) -> tuple[dict[str, str], list[str]]:
    """The environment assignments and argv of a documented command, its paths moved under `root`."""
    words = list(run.argv) if run.argv is not None else shlex.split(cmd)

    def moved(word: str) -> str:
        for doc_path, local in PATHS.items():
            if word == doc_path or word.startswith(doc_path + "/"):
                return str(root / local) + word[len(doc_path):]
        return word

    env = {}
    while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
        key, _, value = words.pop(0).partition("=")
        env[key] = moved(value)
    return env, [moved(w) for w in words]


def test_every_runnable_command_runs(tmp_path, capfd):
    shown = documented()
    root = tmp_path
    for folder in ("operator", "etc"):
        (root / folder).mkdir()
    _digits_images(root)
    failures = []
    for cmd, run in RUN.items():
        if cmd not in shown:
            continue  # reported by test_every_documented_command_is_run_or_skipped_with_a_reason
        if run.before is not None:
            run.before(root)
        env, argv = _argv(cmd, run, root)
        capfd.readouterr()
        with _in(root / run.cwd, env):
            code = _invoke(argv)
        out, err = capfd.readouterr()
        if code != run.code:
            failures.append(f"{cmd!r} ({', '.join(shown[cmd])}): exit {code}, expected {run.code}\n"
                            f"{out[-2000:]}{err[-2000:]}")
            continue
        if run.check is not None:
            try:
                run.check(out, err)
            except (AssertionError, ValueError) as exc:
                failures.append(f"{cmd!r}: output not as documented: {exc}\n{out[-2000:]}{err[-2000:]}")
    assert not failures, "\n\n".join(failures)
