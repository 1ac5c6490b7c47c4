"""Publishing to the Hub and loading back by repo id: the real huggingface_hub client and transformers,
over real HTTP, against the local Hub on 127.0.0.1 (tests/hub_server.py) that the `hub` fixture starts."""

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, ModelCard, hf_hub_download
from huggingface_hub.errors import RepositoryNotFoundError
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from helpers import BLOCK_HF_NANOGPT, HUB_TOKENS, NANOGPT_FIXTURES, OTHER_TOKEN, READ_TOKEN, WRITE_TOKEN, tiny_model
from hf_nanogpt import NanoGPTConfig, cli
from hf_nanogpt.conversion.gpt2 import gpt2_model_card
from hf_nanogpt.conversion.nanogpt import nanogpt_model_card
from hf_nanogpt.hub import HubError, push_to_hub
from hf_nanogpt.model_card import card_for_repo, render_model_card
from hf_nanogpt.saving import SUPPRESS_BIAS_FILE, save_model_folder
from hf_nanogpt.tokenization import char_tokenizer
from hub_server import HubServer

HUB_SERVER = Path(__file__).parent / "hub_server.py"
CHARS = sorted(set("abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ:.,!?\n"))
PROMPT = "ROMEO: "
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000001e221bc330000000049454e44ae426082"
)  # a 1x1 image
API = HfApi(token=WRITE_TOKEN)


def char_model_folder(path: Path, seed: int, loss_plot: bool = False) -> tuple[Path, torch.nn.Module]:
    """A small char-level model folder with the card this package writes (usage pointing at `path`)."""
    model = tiny_model(seed=seed, vocab_size=len(CHARS), block_size=64)
    card = render_model_card(
        f"model {seed}",
        "A test model.",
        {"Training": "seeded"},
        model_ref=str(path),
        tags=["test"],
        prompt=PROMPT,
        loss_plot="loss.png" if loss_plot else None,
    )
    save_model_folder(model, path, char_tokenizer(CHARS), model_card=card)
    if loss_plot:
        (path / "loss.png").write_bytes(PNG)
    return path, model


def repo_files(repo_id: str, revision: str = "main", token=WRITE_TOKEN) -> set[str]:
    return set(HfApi(token=token).list_repo_files(repo_id, revision=revision))


def commits(hub, repo_id: str, branch: str = "main") -> list[str]:
    return [c["sha"] for c in hub.store.history(repo_id, branch)]


def writes_since(hub, mark: int) -> list:
    """Requests that could change something on the Hub (anything but reads and the YAML check)."""
    return [r for r in hub.request_log[mark:] if r[0] in ("POST", "PUT") and "validate-yaml" not in r[1]]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- publishing and loading back ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def published(tmp_path_factory, hub):
    """alice/tiny-chars: v1 then v2 on main, v3 on branch dev (made by --revision)."""
    root = tmp_path_factory.mktemp("published")
    repo = "alice/tiny-chars"
    v1, m1 = char_model_folder(root / "v1", seed=1, loss_plot=True)
    v2, m2 = char_model_folder(root / "v2", seed=2)
    v3, m3 = char_model_folder(root / "v3", seed=3)
    r1 = push_to_hub(v1, repo, token=WRITE_TOKEN)
    r2 = push_to_hub(v2, repo, token=WRITE_TOKEN, commit_message="second version")
    r3 = push_to_hub(v3, repo, token=WRITE_TOKEN, revision="dev")
    return {"repo": repo, "folders": [v1, v2, v3], "models": [m1, m2, m3], "results": [r1, r2, r3]}


def test_push_publishes_a_complete_repo_with_its_card(published, hub):
    repo, v1, (r1, r2, r3) = published["repo"], published["folders"][0], published["results"]
    assert r1.changed and r2.changed and r3.changed
    assert r1.url == f"{hub.url}/{repo}" and r3.url == f"{hub.url}/{repo}/tree/dev" and r3.revision == "dev"
    assert commits(hub, repo) == [r2.commit, r1.commit, commits(hub, repo)[-1]]  # main: v2, v1, initial commit
    assert commits(hub, repo, "dev")[:2] == [r3.commit, r2.commit]  # dev branched from main
    assert hub.store.commit(repo, r2.commit)["title"] == "second version"
    expected = {
        ".gitattributes",
        "README.md",
        "config.json",
        "configuration_nanogpt.py",
        "modeling_nanogpt.py",
        "model.safetensors",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    }
    assert repo_files(repo, r1.commit) == expected | {"loss.png"}
    assert repo_files(repo, "dev") == expected | {"loss.png"}  # loss.png came from main; v3 has none

    config = json.loads(Path(hf_hub_download(repo, "config.json", revision=r1.commit)).read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_nanogpt.NanoGPTForCausalLM"
    card = ModelCard.load(hf_hub_download(repo, "README.md", revision=r1.commit))
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-generation"
    assert {"nanogpt", "hf_nanogpt", "test"} <= set(card.data.tags)
    # usage points at the repo, not the folder it was pushed from; the loss plot is shown
    assert f'pipeline("text-generation", model="{repo}")' in card.text and str(v1) not in card.text
    assert f'from_pretrained("{repo}", trust_remote_code=True)' in card.text and "pip install hf-nanogpt" in card.text
    assert "![training and validation loss](loss.png)" in card.text and "## Limitations" in card.text
    # the local folder is left as it was
    assert f'model="{v1}"' in (v1 / "README.md").read_text()
    assert sha256(Path(hf_hub_download(repo, "loss.png", revision=r1.commit))) == sha256(v1 / "loss.png")


LOAD_SCRIPT = textwrap.dedent(
    """
    import os, sys
    mode, repo, pinned_sha, prompt, ids_file, out_file = sys.argv[1:7]
    if mode == "package":
        import hf_nanogpt  # registers the nanogpt model type: no remote code needed
        kwargs = {}
    else:
        kwargs = {"trust_remote_code": True}
    assert not os.listdir(os.environ["HF_HOME"]), "HF_HOME should start empty"
    assert "HF_TOKEN" not in os.environ

    import torch
    from transformers import AutoModelForCausalLM, pipeline
    ids = torch.load(ids_file)
    model = AutoModelForCausalLM.from_pretrained(repo, **kwargs).eval()
    pinned = AutoModelForCausalLM.from_pretrained(repo, revision=pinned_sha, **kwargs).eval()
    dev = AutoModelForCausalLM.from_pretrained(repo, revision="dev", **kwargs).eval()
    generator = pipeline("text-generation", model=repo, **kwargs)
    with torch.no_grad():
        out = {name: m(ids).logits for name, m in [("main", model), ("pinned", pinned), ("dev", dev)]}
    out["tokens"] = model.generate(ids[:1, :6], max_new_tokens=12, do_sample=False)
    out["text"] = generator(prompt, max_new_tokens=12, do_sample=False)[0]["generated_text"]
    out["module"] = type(model).__module__
    torch.save(out, out_file)
    """
)


@pytest.mark.parametrize("mode", ["package", "remote-code"])
def test_load_by_repo_id_in_a_fresh_process(published, mode, tmp_path):
    """A fresh process, empty HF_HOME, no token: from_pretrained and pipeline by repo id, with the
    package installed or (remote code) unable to import it; revision= pins a branch or a commit."""
    repo, (m1, m2, m3), (r1, _, _) = published["repo"], published["models"], published["results"]
    ids = torch.randint(0, len(CHARS), (2, 24), generator=torch.Generator().manual_seed(0))
    torch.save(ids, tmp_path / "ids.pt")
    (tmp_path / "hf_home").mkdir()
    script = (BLOCK_HF_NANOGPT if mode == "remote-code" else "") + LOAD_SCRIPT
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home")}
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            mode,
            repo,
            r1.commit,
            PROMPT,
            str(tmp_path / "ids.pt"),
            str(tmp_path / "out.pt"),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = torch.load(tmp_path / "out.pt")
    assert out["module"].startswith("transformers_modules" if mode == "remote-code" else "hf_nanogpt")
    with torch.no_grad():
        assert torch.equal(out["main"], m2(ids).logits)  # main is v2
        assert torch.equal(out["pinned"], m1(ids).logits)  # the first commit is v1
        assert torch.equal(out["dev"], m3(ids).logits)
    assert torch.equal(out["tokens"], m2.generate(ids[:1, :6], max_new_tokens=12, do_sample=False))
    tok = char_tokenizer(CHARS)
    prompt_ids = torch.tensor([tok(PROMPT).input_ids])
    assert out["text"] == tok.decode(m2.generate(prompt_ids, max_new_tokens=12, do_sample=False)[0])


def test_pushing_again_unchanged_makes_no_commit(tmp_path, hub):
    folder, _ = char_model_folder(tmp_path / "m", seed=4, loss_plot=True)
    first = push_to_hub(folder, "alice/unchanged", token=WRITE_TOKEN)
    history, mark = commits(hub, "alice/unchanged"), len(hub.request_log)
    again = push_to_hub(folder, "alice/unchanged", token=WRITE_TOKEN)
    assert not again.changed and again.commit == first.commit
    assert commits(hub, "alice/unchanged") == history
    assert not [r for r in writes_since(hub, mark) if "/commit/" in r[1] or r[0] == "PUT"]
    # a rewritten folder with the same contents is unchanged too
    char_model_folder(tmp_path / "m2", seed=4, loss_plot=True)
    (tmp_path / "m2" / "README.md").write_text(
        (folder / "README.md").read_text().replace(str(folder), str(tmp_path / "m2"))
    )
    assert not push_to_hub(tmp_path / "m2", "alice/unchanged", token=WRITE_TOKEN).changed
    assert commits(hub, "alice/unchanged") == history


def test_weights_the_folder_no_longer_has_are_removed(tmp_path, hub):
    """A repo never holds two sets of weights: e.g. shards of an earlier push, when the model is now one file."""
    folder, _ = char_model_folder(tmp_path / "m", seed=7)
    (folder / "model-00002-of-00002.safetensors").write_bytes(b"stale shard")
    (folder / "model.safetensors.index.json").write_text("{}")
    push_to_hub(folder, "alice/reshaped", token=WRITE_TOKEN)
    (folder / "model-00002-of-00002.safetensors").unlink()
    (folder / "model.safetensors.index.json").unlink()
    result = push_to_hub(folder, "alice/reshaped", token=WRITE_TOKEN)
    assert result.changed and len(commits(hub, "alice/reshaped")) == 3
    files = repo_files("alice/reshaped")
    assert (
        "model.safetensors" in files
        and not {"model-00002-of-00002.safetensors", "model.safetensors.index.json"} & files
    )


def test_private_repo_needs_a_token_to_read(tmp_path, hub):
    folder, model = char_model_folder(tmp_path / "m", seed=5)
    result = push_to_hub(folder, "alice/secret", private=True, token=WRITE_TOKEN)
    assert hub.store.meta("alice/secret")["private"]
    with pytest.raises(RepositoryNotFoundError):
        HfApi(token=False).model_info("alice/secret")
    with pytest.raises(OSError, match="(?s)alice/secret.*private repository.*token"):
        AutoModelForCausalLM.from_pretrained("alice/secret", token=False)
    with pytest.raises(OSError, match="alice/secret"):
        AutoModelForCausalLM.from_pretrained("alice/secret", token=OTHER_TOKEN)  # bob is not alice
    loaded = AutoModelForCausalLM.from_pretrained("alice/secret", revision=result.commit, token=READ_TOKEN).eval()
    ids = torch.randint(0, len(CHARS), (1, 16))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
    # --private never publishes into an existing public repo
    push_to_hub(folder, "alice/public", token=WRITE_TOKEN)
    history = commits(hub, "alice/public")
    with pytest.raises(HubError, match="alice/public already exists and is public"):
        push_to_hub(tmp_path / "m", "alice/public", private=True, token=WRITE_TOKEN)
    assert commits(hub, "alice/public") == history


@pytest.mark.parametrize(
    "token, message",
    [
        (None, r"No Hugging Face token found.*`hf auth login` or set HF_TOKEN"),
        ("hf_" + "x" * 34, r"rejected the token.*Invalid user token.*`hf auth login` or set HF_TOKEN"),
        (READ_TOKEN, r"read-only.*write access.*settings/tokens"),
        (OTHER_TOKEN, r"belongs to 'bob', who cannot create repos under 'alice'"),
    ],
    ids=["missing", "invalid", "read-only", "other-namespace"],
)
def test_token_problems_leave_no_repo_and_no_commit(published, token, message, hub):
    folder, repo = published["folders"][0], published["repo"]
    history, mark = commits(hub, repo), len(hub.request_log)
    for target in ("alice/never-created", repo):
        with pytest.raises(HubError, match=message) as err:
            push_to_hub(folder, target, token=token)
        assert token is None or token not in str(err.value)
    assert hub.store.meta("alice/never-created") is None
    assert commits(hub, repo) == history
    assert writes_since(hub, mark) == []  # stopped at whoami: nothing created, nothing uploaded


def test_incomplete_folder_is_refused_before_any_request(published, tmp_path, hub):
    folder = tmp_path / "m"
    save_model_folder(published["models"][0], folder)  # no tokenizer
    mark = len(hub.request_log)
    with pytest.raises(ValueError, match="lacks tokenizer.json, tokenizer_config.json.*save_model_folder"):
        push_to_hub(folder, "alice/incomplete", token=WRITE_TOKEN)
    assert hub.request_log[mark:] == []


# -- LFS and interrupted uploads ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def big_folder(tmp_path_factory, gpt2_tok):
    """A GPT-2-vocabulary model whose model.safetensors is over 10 MB, and a 10.5 MB text file."""
    folder = tmp_path_factory.mktemp("big") / "model"
    save_model_folder(
        tiny_model(seed=6, vocab_size=50304, n_embd=64, n_head=2, n_layer=1, block_size=64), folder, gpt2_tok
    )
    line = "step 100: train loss 1.2345, val loss 1.5678\n"
    (folder / "samples.txt").write_text(line * (int(10.5 * 2**20) // len(line)))
    assert (folder / "model.safetensors").stat().st_size > 10 * 2**20 and (
        folder / "samples.txt"
    ).stat().st_size > 10 * 2**20
    return folder


def test_files_over_10MB_go_through_lfs(big_folder, hub):
    mark = len(hub.request_log)
    push_to_hub(big_folder, "alice/big", token=WRITE_TOKEN)
    requests = hub.request_log[mark:]
    # model.safetensors and suppress_tokens_bias.safetensors (vLLM's logit bias) by pattern, samples.txt by size
    assert [r[2] for r in requests if r[0] == "PUT" and r[1].startswith("/_lfs_upload/")] == [200, 200, 200]
    assert any(r[0] == "POST" and r[1] == "/alice/big.git/info/lfs/objects/batch" for r in requests)
    files = hub.store.commit("alice/big", commits(hub, "alice/big")[0])["files"]
    for name in ("model.safetensors", SUPPRESS_BIAS_FILE, "samples.txt"):  # by pattern and by size: through LFS
        assert files[name]["lfs"]["sha256"] == sha256(big_folder / name)
        assert (hub.store.dir("alice/big") / "lfs" / sha256(big_folder / name)).stat().st_size == (
            big_folder / name
        ).stat().st_size
    assert (
        files["config.json"]["lfs"] is None and files["tokenizer.json"]["lfs"] is None
    )  # small: inline in the commit
    downloaded = hf_hub_download("alice/big", "model.safetensors")
    assert sha256(Path(downloaded)) == sha256(big_folder / "model.safetensors")


def start_server_process(root: Path, port: int = 0, die_during: str | None = None) -> tuple[subprocess.Popen, str]:
    args = [
        sys.executable,
        str(HUB_SERVER),
        "--root",
        str(root),
        "--port",
        str(port),
        "--token",
        f"{WRITE_TOKEN}=alice",
    ]
    proc = subprocess.Popen(
        args + (["--die-during", die_during] if die_during else []), stdout=subprocess.PIPE, text=True
    )
    return proc, proc.stdout.readline().strip()


@pytest.mark.parametrize("stage", ["lfs-put", "commit"])
def test_server_dying_mid_upload_is_a_clear_error_and_the_next_push_completes(big_folder, stage, tmp_path):
    """The server process exits while the big file (lfs-put) or the commit is arriving. The push fails
    with an error that says so and what to do, commits nothing, and once a server is back on the same
    store and port, the same push completes (without sending again what had arrived)."""
    proc, url = start_server_process(tmp_path / "store", die_during=stage)
    assert url.startswith("http://127.0.0.1:"), url
    try:
        with pytest.raises(HubError) as err:
            push_to_hub(big_folder, "alice/crash", token=WRITE_TOKEN, endpoint=url)
        assert proc.wait(timeout=60) == 3  # it did die
    finally:
        proc.kill()
    message = str(err.value)
    assert f"Lost the connection to the Hub at {url} while pushing {big_folder} to alice/crash" in message
    assert "The push did not complete: run it again" in message and WRITE_TOKEN not in message

    port = int(url.rsplit(":", 1)[1])
    server = HubServer(tmp_path / "store", {WRITE_TOKEN: "alice"}, port=port).start()  # back, same store and port
    try:
        assert len(server.store.history("alice/crash")) == 1  # only the repo's initial commit: nothing partial
        result = push_to_hub(big_folder, "alice/crash", token=WRITE_TOKEN, endpoint=url)
        assert result.changed
        files = server.store.commit("alice/crash", result.commit)["files"]
        assert files["model.safetensors"]["lfs"]["sha256"] == sha256(big_folder / "model.safetensors")
        assert {"README.md", "tokenizer.json", "samples.txt"} <= set(files)
        puts = [r for r in server.request_log if r[0] == "PUT"]
        assert len(puts) == (3 if stage == "lfs-put" else 0)  # the dead server had all LFS files before the commit
    finally:
        server.stop()


# -- conversions publish, cards declare their origin -------------------------------------------------


def test_convert_nanogpt_push_to_hub(tmp_path, hub, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", WRITE_TOKEN)
    src = NANOGPT_FIXTURES / "A_char_nobias"
    assert (
        cli.main(
            [
                "convert",
                "nanogpt",
                str(src / "ckpt.pt"),
                str(tmp_path / "out"),
                "--meta",
                str(src / "meta.pkl"),
                "--push-to-hub",
                "alice/shakespeare-char",
                "--private",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "verification:" in printed and f"pushed {tmp_path / 'out'} to {hub.url}/alice/shakespeare-char" in printed
    assert hub.store.meta("alice/shakespeare-char")["private"]
    card = ModelCard.load(hf_hub_download("alice/shakespeare-char", "README.md", token=WRITE_TOKEN))
    assert card.data.datasets == ["karpathy/tiny_shakespeare"] and card.data.base_model is None  # init_from scratch
    assert "shakespeare_char" in card.text and "best validation loss" in card.text
    assert 'model="alice/shakespeare-char"' in card.text
    assert "nanogpt.json" in repo_files("alice/shakespeare-char")


def test_convert_gpt2_from_a_hub_id_push_to_hub(tmp_path, hub, monkeypatch, capsys):
    """A GPT-2 fetched by Hub id names that id as base_model in the card of the published conversion."""
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=50257, n_positions=32, n_embd=32, n_layer=2, n_head=2)).eval()
    gpt2.save_pretrained(tmp_path / "gpt2")
    API.create_repo("alice/tiny-gpt2")
    API.upload_folder(repo_id="alice/tiny-gpt2", folder_path=tmp_path / "gpt2")
    monkeypatch.setenv("HF_TOKEN", WRITE_TOKEN)
    assert (
        cli.main(
            ["convert", "gpt2", "alice/tiny-gpt2", str(tmp_path / "out"), "--push-to-hub", "alice/tiny-gpt2-nanogpt"]
        )
        == 0
    )
    assert "pushed" in capsys.readouterr().out
    card = ModelCard.load(hf_hub_download("alice/tiny-gpt2-nanogpt", "README.md"))
    assert card.data.base_model == "alice/tiny-gpt2" and 'model="alice/tiny-gpt2-nanogpt"' in card.text


def test_cards_name_gpt2_base_models_by_their_hub_ids():
    config = NanoGPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=50304)
    card = ModelCard(gpt2_model_card("gpt2-medium", config, "GPT-2 BPE", "out", 1000))
    assert card.data.base_model == "openai-community/gpt2-medium"
    info = json.loads((NANOGPT_FIXTURES / "B_bpe_bias" / "info.json").read_text())
    info["source"] = "ckpt.pt"
    for init_from, base in [("gpt2-xl", "openai-community/gpt2-xl"), ("scratch", None), ("resume", None)]:
        info["config"] = {**info["config"], "init_from": init_from, "dataset": "openwebtext"}
        card = ModelCard(nanogpt_model_card(info, config, "GPT-2 BPE", "out", 1000))
        assert card.data.base_model == base and card.data.datasets == ["Skylion007/openwebtext"]
        assert f"| initialised from (init_from) | {init_from} |" in card.text


def test_card_for_a_folder_without_one(published, tmp_path):
    folder = tmp_path / "m"
    save_model_folder(published["models"][0], folder, char_tokenizer(CHARS))
    card = ModelCard(card_for_repo(folder, "alice/plain"))
    assert card.data.library_name == "transformers" and "nanogpt" in card.data.tags
    assert "| n_layer | 2 |" in card.text and 'model="alice/plain"' in card.text
    (folder / "README.md").write_text("# My model\n\nTrained on my poems.\n")  # a README without metadata
    (folder / "loss.png").write_bytes(PNG)
    card = ModelCard(card_for_repo(folder, "alice/plain"))
    assert card.data.pipeline_tag == "text-generation" and "Trained on my poems." in card.text
    assert "![training and validation loss](loss.png)" in card.text


# -- the token stays secret --------------------------------------------------------------------------


def grep_tree(root: Path, secret: str) -> list[str]:
    return [
        str(p) for p in root.rglob("*") if p.is_file() and not p.is_symlink() and secret.encode() in p.read_bytes()
    ]


def test_token_never_appears_in_logs_errors_files_or_cache(published, hub, tmp_path, capfd):
    folder = published["folders"][0]
    # the command line, with every debug log huggingface_hub has (HF_DEBUG prints each request as curl)
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_DEBUG": "1", "TRANSFORMERS_VERBOSITY": "debug"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "hf_nanogpt.cli",
            "push",
            str(folder),
            "alice/token-check",
            "--token",
            WRITE_TOKEN,
            "--commit-message",
            "check",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"pushed {folder} to {hub.url}/alice/token-check (commit " in result.stdout
    assert "authorization: <TOKEN>" in result.stderr  # the debug log showed the headers, with the token hidden
    outputs = [result.stdout, result.stderr]
    # errors, from the CLI and from Python, including a token passed where the repo id goes
    for argv in (
        ["push", str(folder), "alice/token-check", "--token", READ_TOKEN],
        ["push", str(folder), WRITE_TOKEN, "--token", WRITE_TOKEN],
    ):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(argv)
        assert exit_info.value.code == 2
    captured = capfd.readouterr()
    assert "error: This token of 'alice' is read-only" in captured.err and "Traceback" not in captured.err
    outputs += [captured.out, captured.err]
    for repo_id in (WRITE_TOKEN, f"alice/{WRITE_TOKEN}"):
        with pytest.raises(HubError, match="<token>") as err:
            push_to_hub(folder, repo_id, token=WRITE_TOKEN)
        assert err.value.__cause__ is None  # the original exception, which holds the token, is not chained
        outputs.append(str(err.value))
    assert hub.store.meta(f"alice/{WRITE_TOKEN}") is None
    for token in HUB_TOKENS:
        for text in outputs:
            assert token not in text
        # what the Hub stored (files, commits, LFS objects), the caches, the pushed folders
        for root in (hub.store.root, tmp_path / "hf_home", Path(os.environ["HF_HOME"]), *published["folders"]):
            assert grep_tree(root, token) == [], root
