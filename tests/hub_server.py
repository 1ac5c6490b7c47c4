"""A local Hugging Face Hub for the tests: just enough of the Hub's HTTP protocol, Python stdlib only.

The real `huggingface_hub` client (create_repo, upload_folder with regular and LFS files, model_info,
hf_hub_download) and transformers' from_pretrained("user/repo") work against it with
`HF_ENDPOINT=http://127.0.0.1:<port>` and `HF_HUB_DISABLE_XET=1` (Xet uploads are not implemented).
Trimmed from a reference server to what tests/test_hub.py needs: model repos, branches, public and
private repos, tokens with a write or read role, LFS through the git-lfs batch API (basic transfer).

Storage under `root`: one folder per repo with meta.json, refs.json (branch -> commit sha),
commits/<sha>.json (the full file map of each commit), blobs/<git oid> and lfs/<sha256>.

Run as its own process (`python hub_server.py --root DIR --port N --token TOKEN=USER[:read]`) it can
also be told to die in the middle of an upload (`--die-during lfs-put|commit`), as a crashed server
would: the process exits while the request body is still arriving.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import os
import re
import secrets
import tempfile
import threading
import time
import traceback
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

LFS_THRESHOLD = 10 * 1024 * 1024  # files above this size always go through LFS, as on the Hub
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
SHA_RE = re.compile(r"^[0-9a-f]{40}$")
# the Hub's default .gitattributes: these patterns go through LFS whatever their size
LFS_PATTERNS = (
    "*.bin *.ckpt *.h5 *.msgpack *.npy *.npz *.onnx *.pickle *.pkl *.pt *.pth *.safetensors *.tar *.zip".split()
)
DEFAULT_GITATTRIBUTES = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in LFS_PATTERNS)


class HubError(Exception):
    """An HTTP error answer. `code` goes into X-Error-Code, which the client maps to its exception types."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        headers: dict | None = None,
        extra: dict | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.code, self.headers, self.extra = (
            status,
            message,
            code,
            headers or {},
            extra or {},
        )


def now_iso() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def check_path(path: str) -> str:
    if not path or path.startswith("/") or any(p in ("", ".", "..", ".git") for p in path.split("/")):
        raise HubError(400, f"Invalid path in repo: {path!r}")
    return path


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
    os.replace(tmp, path)  # atomic: a server killed mid-write leaves the previous state


class Store:
    """Model repos on disk. Mutations happen under `self.lock`; files are replaced atomically."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()

    def dir(self, repo_id: str) -> Path:
        return self.root / repo_id

    def meta(self, repo_id: str) -> dict | None:
        p = self.dir(repo_id) / "meta.json"
        return json.loads(p.read_text()) if p.is_file() else None

    def refs(self, repo_id: str) -> dict:
        return json.loads((self.dir(repo_id) / "refs.json").read_text())

    def commit(self, repo_id: str, sha: str) -> dict:
        return json.loads((self.dir(repo_id) / "commits" / f"{sha}.json").read_text())

    def history(self, repo_id: str, branch: str = "main") -> list[dict]:
        """The commits of `branch`, newest first (for tests)."""
        out, sha = [], self.refs(repo_id).get(branch)
        while sha:
            out.append({"sha": sha, **self.commit(repo_id, sha)})
            sha = out[-1]["parents"][0] if out[-1]["parents"] else None
        return out

    def create(self, repo_id: str, private: bool, author: str) -> None:
        d = self.dir(repo_id)
        for sub in ("commits", "blobs", "lfs", "tmp"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        _write_json(d / "meta.json", {"id": uuid.uuid4().hex[:24], "private": bool(private), "createdAt": now_iso()})
        _write_json(d / "refs.json", {})
        self.write_commit(
            repo_id, "main", [("add", ".gitattributes", DEFAULT_GITATTRIBUTES.encode())], "initial commit", "", author
        )

    def resolve(self, repo_id: str, rev: str) -> str:
        """A branch name (or refs/heads/name) or a full or abbreviated commit sha -> commit sha."""
        refs = self.refs(repo_id)
        branch = rev.removeprefix("refs/heads/")
        if branch in refs:
            return refs[branch]
        cdir = self.dir(repo_id) / "commits"
        if SHA_RE.fullmatch(rev) and (cdir / f"{rev}.json").is_file():
            return rev
        if re.fullmatch(r"[0-9a-f]{7,39}", rev):
            hits = [p.stem for p in cdir.glob(f"{rev}*.json")]
            if len(hits) == 1:
                return hits[0]
        raise HubError(404, f"Invalid rev id: {rev}", code="RevisionNotFound")

    def content_path(self, repo_id: str, entry: dict) -> Path:
        d = self.dir(repo_id)
        return d / "lfs" / entry["lfs"]["sha256"] if entry.get("lfs") else d / "blobs" / entry["oid"]

    def write_commit(self, repo_id, branch, ops, title, message, author) -> str:
        """`ops`: ("add", path, bytes) | ("lfs", path, sha256, size) | ("delete", path)."""
        with self.lock:
            refs = self.refs(repo_id)
            branch = branch.removeprefix("refs/heads/")
            head = refs.get(branch)
            if head is None and refs:  # only the very first commit may create a branch
                raise HubError(404, f"Invalid rev id: {branch}", code="RevisionNotFound")
            files = dict(self.commit(repo_id, head)["files"]) if head else {}
            d = self.dir(repo_id)
            for op in ops:
                if op[0] == "add":
                    oid = git_blob_oid(op[2])
                    (d / "blobs" / oid).write_bytes(op[2])
                    files[op[1]] = {"oid": oid, "size": len(op[2]), "lfs": None}
                elif op[0] == "lfs":
                    _, path, sha256, size = op
                    obj = d / "lfs" / sha256
                    if not obj.is_file() or (size is not None and obj.stat().st_size != size):
                        raise HubError(400, f"LFS object {sha256} for {path} was not uploaded")
                    size = obj.stat().st_size
                    ptr = lfs_pointer(sha256, size)
                    files[path] = {
                        "oid": git_blob_oid(ptr),
                        "size": size,
                        "lfs": {"sha256": sha256, "pointerSize": len(ptr)},
                    }
                elif files.pop(op[1], None) is None:  # delete
                    raise HubError(404, f"A file with this name doesn't exist: {op[1]}", code="EntryNotFound")
            body = {
                "parents": [head] if head else [],
                "files": files,
                "title": title,
                "message": message,
                "author": author,
                "date": now_iso(),
            }
            sha = hashlib.sha1((json.dumps(body, sort_keys=True) + uuid.uuid4().hex).encode()).hexdigest()
            _write_json(d / "commits" / f"{sha}.json", body)
            refs[branch] = sha
            _write_json(d / "refs.json", refs)
            return sha

    def lfs_patterns(self, repo_id: str, files: dict) -> list[str]:
        e = files.get(".gitattributes")
        if not e or e.get("lfs"):
            return []
        text = self.content_path(repo_id, e).read_text(errors="replace")
        return [ln.split()[0] for ln in text.splitlines() if "filter=lfs" in ln and ln.strip()]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_HTTPServer"

    # ------------------------------------------------------------------ plumbing
    def log_message(self, fmt, *args):  # quiet: the request log is in HubServer.request_log
        pass

    def log_request(self, code="-", size="-"):
        self.server.hub.request_log.append((self.command, self.path, int(code) if str(code).isdigit() else code))

    def do_GET(self):
        self._body_consumed = False
        self._rid = uuid.uuid4().hex
        try:
            self._route()
        except HubError as e:
            self._send_error(e)
        except Exception as e:  # a bug in this server: answer 500 and show it
            traceback.print_exc()
            self._send_error(HubError(500, f"Internal error: {e!r}"))

    do_HEAD = do_POST = do_PUT = do_GET

    @property
    def base(self) -> str:
        return f"http://{self.headers.get('Host') or '%s:%d' % self.server.server_address[:2]}"

    def _iter_body(self):
        # huggingface_hub always sends Content-Length (no chunked bodies), the LFS PUT included
        size = int(self.headers.get("Content-Length") or 0)
        while size:
            chunk = self.rfile.read(min(size, 1 << 20))
            if not chunk:
                raise HubError(400, "Truncated body")
            size -= len(chunk)
            yield chunk
        self._body_consumed = True

    def _body(self) -> bytes:
        return b"".join(self._iter_body())

    def _json_body(self):
        try:
            return json.loads(self._body() or b"{}")
        except ValueError:
            raise HubError(400, "Malformed JSON body")

    def _die_if_asked(self, stage: str) -> None:
        """Crash like a real server would: take part of the request body, then exit the process."""
        if self.server.hub.die_during == stage:
            self.rfile.read(min(int(self.headers.get("Content-Length") or 0) // 2, 1 << 20))
            os._exit(3)

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, ctype="application/json"):
        if not self._body_consumed and self.command in ("POST", "PUT"):
            self.close_connection = True  # unread request body: do not reuse the connection
        self.send_response(status)
        hdrs = {"Content-Type": ctype, "Content-Length": str(len(body)), "X-Request-Id": self._rid, **(headers or {})}
        if self.close_connection:
            hdrs["Connection"] = "close"
        for k, v in hdrs.items():
            self.send_header(k, str(v))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _json(self, obj, status=200, headers=None, ctype="application/json"):
        self._send(status, json.dumps(obj).encode(), headers, ctype)

    def _send_error(self, e: HubError):
        # the client maps X-Error-Code to its exception types; a bare 401 on http:// stays a generic error
        headers = {"X-Error-Message": e.message, **e.headers}
        if e.code:
            headers["X-Error-Code"] = e.code
        self._json({"error": e.message, **e.extra}, e.status, headers)

    # ------------------------------------------------------------------ auth
    def _user(self) -> dict | None:
        auth = self.headers.get("Authorization")
        if not auth:
            return None
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        info = self.server.hub.tokens.get(token)
        if info is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        return info

    @staticmethod
    def _member(user, ns) -> bool:
        return user is not None and (ns == user["name"] or ns in user["orgs"])

    def _repo_for_read(self, repo_id) -> dict:
        user = self._user()
        meta = self.server.hub.store.meta(repo_id)
        if meta is None or (meta["private"] and not self._member(user, repo_id.split("/")[0])):
            raise HubError(401 if user is None else 404, "Repository not found", code="RepoNotFound")
        return meta

    def _repo_for_write(self, repo_id) -> dict:
        user = self._user()
        if user is None:
            raise HubError(401, "Authentication required: send 'Authorization: Bearer <token>'")
        meta = self.server.hub.store.meta(repo_id)
        ns = repo_id.split("/")[0]
        if meta is None or (meta["private"] and not self._member(user, ns)):
            raise HubError(404, "Repository not found", code="RepoNotFound")
        if not self._member(user, ns) or user["role"] != "write":
            raise HubError(403, f"You don't have write access to model {repo_id}")
        return user

    # ------------------------------------------------------------------ routing
    def _route(self):
        url = urlsplit(self.path)
        self.query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        raw, m = url.path, self.command
        # revisions come quoted with safe="" (refs%2Fheads%2Fx): split first, then unquote
        segs = [unquote(s) for s in raw.split("/")[1:]]
        if raw.startswith("/_lfs_upload/") and m == "PUT":
            return self._lfs_put(segs[1])
        if ".git/info/lfs/objects/" in raw and m == "POST":
            repo_part, action = raw.split(".git/info/lfs/objects/", 1)
            repo_id = self._repo_id([unquote(s) for s in repo_part.split("/")[1:]])
            return self._lfs_batch(repo_id) if action == "batch" else self._lfs_verify(repo_id)
        if segs[0] != "api":
            if "resolve" in segs and m in ("GET", "HEAD"):
                i = segs.index("resolve")
                return self._resolve(self._repo_id(segs[:i]), segs[i + 1], "/".join(segs[i + 2 :]))
            raise HubError(404, "Not found")
        rest = segs[1:]
        if rest == ["whoami-v2"] and m == "GET":
            return self._whoami()
        if rest == ["validate-yaml"] and m == "POST":
            return self._validate_yaml()
        if rest == ["repos", "create"] and m == "POST":
            return self._create_repo()
        if len(rest) >= 3 and rest[0] == "models":
            repo_id, op, args = f"{rest[1]}/{rest[2]}", (rest[3] if len(rest) > 3 else ""), rest[4:]
            arg = "/".join(args)
            routes = {
                ("", "GET"): lambda: self._info(repo_id, None),
                ("revision", "GET"): lambda: self._info(repo_id, arg),
                ("tree", "GET"): lambda: self._tree(repo_id, args[0], "/".join(args[1:])),
                ("preupload", "POST"): lambda: self._preupload(repo_id, arg),
                ("commit", "POST"): lambda: self._commit(repo_id, arg),
                ("branch", "POST"): lambda: self._create_branch(repo_id, arg),
            }
            if op in ("xet-read-token", "xet-write-token"):
                raise HubError(501, "Xet storage is not supported by this test server: set HF_HUB_DISABLE_XET=1")
            if (op, m) in routes:
                return routes[(op, m)]()
        raise HubError(404, f"Not found: {m} {raw}")

    @staticmethod
    def _repo_id(segs: list[str]) -> str:
        if len(segs) != 2:
            raise HubError(404, "Repository not found", code="RepoNotFound")
        return "/".join(segs)

    # ------------------------------------------------------------------ account / repos
    def _whoami(self):
        user = self._user()
        if user is None:
            raise HubError(401, "Authentication required")
        self._json(
            {
                "type": "user",
                "id": user["name"],
                "name": user["name"],
                "fullname": user["name"],
                "orgs": [{"type": "org", "name": o} for o in user["orgs"]],
                "auth": {"type": "access_token", "accessToken": {"displayName": "test-token", "role": user["role"]}},
            }
        )

    def _create_repo(self):
        body = self._json_body()
        user = self._user()
        if user is None:
            raise HubError(401, "Authentication required: send 'Authorization: Bearer <token>'")
        if (body.get("type") or "model") != "model":
            raise HubError(400, "This test server only has model repos")
        ns, name = body.get("organization") or user["name"], body.get("name") or ""
        if not (NAME_RE.fullmatch(name) and NAME_RE.fullmatch(ns)) or "--" in name or ".." in name:
            raise HubError(400, f"Invalid repo name {ns}/{name}")
        if not self._member(user, ns) or user["role"] != "write":
            raise HubError(403, f'You don\'t have the rights to create a model under the namespace "{ns}"')
        repo_id, store = f"{ns}/{name}", self.server.hub.store
        url = f"{self.base}/{repo_id}"
        with store.lock:
            if store.meta(repo_id) is not None:
                # exist_ok=True: the client accepts the 409 and then reads body["url"]
                raise HubError(409, "You already created this model repo", extra={"url": url})
            private = body.get("visibility") == "private" if "visibility" in body else bool(body.get("private"))
            store.create(repo_id, private, user["name"])
        self._json({"url": url, "name": repo_id, "id": store.meta(repo_id)["id"]})

    def _validate_yaml(self):
        # the client calls this before uploading a README.md; a YAML block that is not a mapping is refused
        content = self._json_body().get("content", "")
        errors = []
        m = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", content, re.S)
        if m:
            import yaml

            try:
                if not isinstance(yaml.safe_load(m.group(1)) or {}, dict):
                    errors.append({"message": "metadata must be a YAML mapping"})
            except yaml.YAMLError as e:
                errors.append({"message": f"Invalid YAML: {e}"})
        self._json({"errors": errors, "warnings": []}, 400 if errors else 200)

    def _create_branch(self, repo_id, name):
        body = self._json_body()
        self._repo_for_write(repo_id)
        if not name or not re.fullmatch(r"[A-Za-z0-9._/-]+", name) or ".." in name:
            raise HubError(400, f"Invalid ref name {name!r}")
        store = self.server.hub.store
        with store.lock:
            start = store.resolve(repo_id, body.get("startingPoint") or "main")
            refs = store.refs(repo_id)
            if name in refs:
                raise HubError(409, f"Reference already exists: {name}")
            refs[name] = start
            _write_json(store.dir(repo_id) / "refs.json", refs)
        self._json({})

    # ------------------------------------------------------------------ read API
    def _info(self, repo_id, rev):
        meta = self._repo_for_read(repo_id)
        store = self.server.hub.store
        sha = store.resolve(repo_id, rev or "main")
        commit = store.commit(repo_id, sha)
        blobs = self.query.get("blobs") in ("True", "true", "1")
        siblings = []
        for path, e in sorted(commit["files"].items()):
            s = {"rfilename": path}
            if blobs:
                s.update(size=e["size"], blobId=e["oid"])
                if e.get("lfs"):
                    s["lfs"] = {
                        "size": e["size"],
                        "sha256": e["lfs"]["sha256"],
                        "pointerSize": e["lfs"]["pointerSize"],
                    }
            siblings.append(s)
        self._json(
            {
                "_id": meta["id"],
                "id": repo_id,
                "modelId": repo_id,
                "author": repo_id.split("/")[0],
                "sha": sha,
                "lastModified": commit["date"],
                "createdAt": meta["createdAt"],
                "private": meta["private"],
                "gated": False,
                "disabled": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "siblings": siblings,
            }
        )

    def _tree(self, repo_id, rev, path):
        self._repo_for_read(repo_id)
        store = self.server.hub.store
        sha = store.resolve(repo_id, rev)
        files = store.commit(repo_id, sha)["files"]
        dirs = {"/".join(p.split("/")[:i]) for p in files for i in range(1, p.count("/") + 1)}
        pre = path.strip("/")
        cands = [p for p in [*files, *sorted(dirs)] if not pre or p.startswith(pre + "/")]
        recursive = self.query.get("recursive", "").lower() in ("true", "1")
        depth = pre.count("/") + 1 if pre else 0
        selected = cands if recursive else [p for p in cands if p.count("/") == depth]
        if pre and not selected:
            raise HubError(
                404, f'{pre} does not exist on "{sha}"', code="EntryNotFound", headers={"X-Repo-Commit": sha}
            )
        out = []
        for p in selected:
            if p in files:
                e = files[p]
                item = {"type": "file", "oid": e["oid"], "size": e["size"], "path": p}
                if e.get("lfs"):
                    item["lfs"] = {
                        "oid": e["lfs"]["sha256"],
                        "size": e["size"],
                        "pointerSize": e["lfs"]["pointerSize"],
                    }
            else:
                item = {
                    "type": "directory",
                    "oid": hashlib.sha1(f"{sha}:{p}".encode()).hexdigest(),
                    "size": 0,
                    "path": p,
                }
            out.append(item)
        self._json(out)

    def _resolve(self, repo_id, rev, path):
        # the client insists on X-Repo-Commit and an ETag (sha256 for LFS files); X-Linked-* win for LFS
        self._repo_for_read(repo_id)
        store = self.server.hub.store
        sha = store.resolve(repo_id, rev)
        entry = store.commit(repo_id, sha)["files"].get(path)
        if entry is None:
            raise HubError(404, "Entry not found", code="EntryNotFound", headers={"X-Repo-Commit": sha})
        fpath, size = store.content_path(repo_id, entry), entry["size"]
        etag = entry["lfs"]["sha256"] if entry.get("lfs") else entry["oid"]
        headers = {"ETag": f'"{etag}"', "X-Repo-Commit": sha}
        if entry.get("lfs"):
            headers.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(size)})
        if self.headers.get("Range") and self.command == "GET":  # only resumed downloads send one
            raise HubError(416, "Range requests are not supported by this test server")
        self.send_response(200)
        for k, v in {
            "Content-Type": "application/octet-stream",
            "Content-Length": str(size),
            "X-Request-Id": self._rid,
            **headers,
        }.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command == "GET" and size:
            self.wfile.write(fpath.read_bytes())

    # ------------------------------------------------------------------ write API
    def _preupload(self, repo_id, rev):
        body = self._json_body()
        self._repo_for_write(repo_id)
        store = self.server.hub.store
        files = store.commit(repo_id, store.resolve(repo_id, rev))["files"]
        patterns = store.lfs_patterns(repo_id, files)
        out = []
        for f in body.get("files", []):
            path, size = check_path(f["path"]), int(f["size"])
            sample = base64.b64decode(f.get("sample") or "")
            lfs = size > self.server.hub.lfs_threshold or b"\0" in sample or any(_matches(path, p) for p in patterns)
            e = files.get(path)
            # the oid of the stored file lets the client skip unchanged files (no empty commits)
            oid = (e["lfs"]["sha256"] if e.get("lfs") else e["oid"]) if e else None
            out.append(
                {
                    "path": path,
                    "uploadMode": "lfs" if lfs and size > 0 else "regular",
                    "shouldIgnore": False,
                    "oid": oid,
                }
            )
        self._json({"files": out})

    def _commit(self, repo_id, rev):
        self._die_if_asked("commit")
        raw = self._body()
        user = self._repo_for_write(repo_id)
        store = self.server.hub.store
        header, ops = {}, []
        for line in raw.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, v = item.get("key"), item.get("value", {})
            if key == "header":
                header = v
            elif key == "file":
                data = base64.b64decode(v["content"]) if v.get("encoding") == "base64" else v["content"].encode()
                ops.append(("add", check_path(v["path"]), data))
            elif key == "lfsFile":
                if v.get("algo", "sha256") != "sha256":
                    raise HubError(400, "Only sha256 LFS objects are supported")
                ops.append(("lfs", check_path(v["path"]), v["oid"], v.get("size")))
            elif key == "deletedFile":
                ops.append(("delete", check_path(v["path"])))
            else:
                raise HubError(400, f"Unsupported commit operation {key!r}")
        if not header.get("summary"):
            raise HubError(400, "Commit summary is required")
        if self.query.get("create_pr"):
            raise HubError(400, "Pull requests are not supported by this test server")
        store.resolve(repo_id, rev)  # RevisionNotFound for unknown branches
        if header.get("parentCommit"):
            raise HubError(400, "parent_commit is not supported by this test server")
        sha = store.write_commit(repo_id, rev, ops, header["summary"], header.get("description", ""), user["name"])
        self._json(
            {
                "success": True,
                "commitOid": sha,
                "pullRequestUrl": None,
                "hookOutput": "",
                "commitUrl": f"{self.base}/{repo_id}/commit/{sha}",
            }
        )

    # ------------------------------------------------------------------ git-lfs (basic transfer)
    def _lfs_batch(self, repo_id):
        body = self._json_body()
        self._repo_for_write(repo_id)
        if body.get("operation") != "upload" or "basic" not in (body.get("transfers") or ["basic"]):
            raise HubError(400, "Only 'upload' with the 'basic' LFS transfer is supported")
        hub, d = self.server.hub, self.server.hub.store.dir(repo_id)
        objects = []
        for o in body.get("objects", []):
            oid, size = str(o.get("oid", "")), int(o.get("size", -1))
            if not re.fullmatch(r"[0-9a-f]{64}", oid) or size < 0:
                objects.append({"oid": oid, "size": max(size, 0), "error": {"code": 422, "message": "Invalid object"}})
                continue
            obj = d / "lfs" / oid
            if obj.is_file() and obj.stat().st_size == size:
                objects.append({"oid": oid, "size": size})  # already stored: no actions, nothing to send
                continue
            # the PUT comes without auth headers: the upload URL authorises itself with a one-time ticket
            ticket = secrets.token_urlsafe(24)
            with hub.tickets_lock:
                hub.tickets[ticket] = (repo_id, oid, size, time.time() + 3600)
            objects.append(
                {
                    "oid": oid,
                    "size": size,
                    "authenticated": True,
                    "actions": {
                        "upload": {"href": f"{self.base}/_lfs_upload/{ticket}", "expires_in": 3600},
                        "verify": {"href": f"{self.base}/{repo_id}.git/info/lfs/objects/verify"},
                    },
                }
            )
        self._json({"transfer": "basic", "objects": objects}, ctype="application/vnd.git-lfs+json")

    def _lfs_put(self, ticket):
        self._die_if_asked("lfs-put")
        hub = self.server.hub
        with hub.tickets_lock:
            t = hub.tickets.pop(ticket, None)
        if t is None or t[3] < time.time():
            raise HubError(403, "Invalid or expired upload URL")
        repo_id, oid, size, _ = t
        d = hub.store.dir(repo_id)
        h, n = hashlib.sha256(), 0
        with tempfile.NamedTemporaryFile(dir=d / "tmp", delete=False) as tmp:
            for chunk in self._iter_body():
                h.update(chunk)
                n += len(chunk)
                tmp.write(chunk)
        if h.hexdigest() != oid or n != size:
            os.unlink(tmp.name)
            raise HubError(400, f"Uploaded content does not match oid/size (got {h.hexdigest()}/{n})")
        os.replace(tmp.name, d / "lfs" / oid)
        self._send(200, b"", {"ETag": f'"{oid}"'})

    def _lfs_verify(self, repo_id):
        body = self._json_body()
        self._repo_for_write(repo_id)
        obj = self.server.hub.store.dir(repo_id) / "lfs" / str(body.get("oid"))
        if not obj.is_file() or obj.stat().st_size != body.get("size"):
            raise HubError(404, "LFS object not found")
        self._json({}, ctype="application/vnd.git-lfs+json")


def _matches(path: str, pattern: str) -> bool:
    return fnmatch.fnmatch(path, pattern) or ("/" not in pattern and fnmatch.fnmatch(path.rsplit("/", 1)[-1], pattern))


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    hub: "HubServer"


class HubServer:
    """`HubServer(root, tokens={"hf_...": "alice"}).start()`, then `HF_ENDPOINT=server.url`.

    `tokens` maps a token to a user name, or to {"name", "role": "write"|"read", "orgs": [...]}.
    `request_log` holds (method, path, status) of every request answered.
    """

    def __init__(self, root, tokens=None, host="127.0.0.1", port=0, die_during=None):
        self.store = Store(root)
        self.tokens = {}
        for tok, info in (tokens or {}).items():
            info = {"name": info} if isinstance(info, str) else dict(info)
            self.tokens[tok] = {"role": "write", "orgs": [], **info}
        self.lfs_threshold, self.die_during = LFS_THRESHOLD, die_during
        self.request_log: list[tuple[str, str, object]] = []
        self.tickets: dict = {}
        self.tickets_lock = threading.Lock()
        self.httpd = _HTTPServer((host, port), Handler)
        self.httpd.hub = self
        self._thread = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "HubServer":
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="hub-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def main(argv=None):
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", required=True)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--token", action="append", default=[], metavar="TOKEN=USER[:read]")
    ap.add_argument(
        "--die-during",
        choices=["lfs-put", "commit"],
        default=None,
        help="exit the process while receiving this request (a server crashing mid-upload)",
    )
    a = ap.parse_args(argv)
    tokens = {}
    for spec in a.token:
        tok, _, user = spec.partition("=")
        name, _, role = user.partition(":")
        tokens[tok] = {"name": name, "role": role or "write"}
    srv = HubServer(a.root, tokens, port=a.port, die_during=a.die_during)
    print(srv.url, flush=True)  # the parent reads this line to know the server is listening
    srv.httpd.serve_forever()


if __name__ == "__main__":
    main()
