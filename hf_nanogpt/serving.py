"""`hf-nanogpt serve MODEL`: an OpenAI-compatible HTTP server for one model folder or Hub id.

    hf-nanogpt serve out/my-model --port 8000
    curl http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' \\
        -d '{"model": "out/my-model", "prompt": "ROMEO:", "max_tokens": 32, "temperature": 0}'

transformers' own server does the serving: its FastAPI app (`build_server`), its endpoint handlers, its OpenAI
types, its generation managers (continuous batching or one `generate()` at a time). `transformers serve` cannot
serve this model (it picks the class with `getattr(transformers, config.architectures[0])`), so the one thing
replaced is how the model loads: through AutoModelForCausalLM and AutoTokenizer, which know the nanogpt model
type once this package is imported, and run a folder's own code only with --trust-remote-code.

In front of transformers' app sits `RequestChecks`, ours: it answers only the four endpoints served (/health,
/v1/models, /v1/completions, /v1/chat/completions), and turns away, with a 4xx saying what was expected and what
was found, an oversized body, malformed JSON, wrong types, another model's name, a prompt that leaves no room in
block_size, a max_tokens past that room, and chat on a model without a chat template. A request without
max_tokens gets the room left in block_size, as the folder's generation_config.json (max_length = block_size).

transformers' serving code changes between releases; where it does (5.25 runs the model in a process of its own,
loaded by a `ModelLoader`; 5.18 lists the Hub cache in /v1/models), the differences are found by looking for a
class or a parameter, never by version numbers.
"""

import asyncio
import concurrent.futures
import functools
import inspect
import json
import os
import signal
import socket
import sys

import fastapi  # noqa: F401  (transformers' app)
import openai  # noqa: F401  (transformers' handlers build their answers from the openai package's types)
import transformers
import uvicorn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig
from transformers.cli.serving import model_manager as transformers_model_manager
from transformers.cli.serving import utils as serving_utils
from transformers.cli.serving.chat_completion import ChatCompletionHandler
from transformers.cli.serving.completion import CompletionHandler
from transformers.cli.serving.server import build_server
from transformers.cli.serving.utils import BaseHandler, GenerationState, Modality

import hf_nanogpt  # noqa: F401  (registers the nanogpt model type with the Auto classes)
from hf_nanogpt.cpu_decode import attach_cpu_decode
from hf_nanogpt.tokenization import encode_text

DEFAULT_MAX_BODY_BYTES = 1 << 20  # 1 MiB: a block_size of 1024 GPT-2 tokens is about 4 KB of text
ENDPOINTS = {"/health": "GET", "/v1/models": "GET", "/v1/completions": "POST", "/v1/chat/completions": "POST"}
SHUTDOWN_GRACE_SECONDS = 5  # Ctrl-C waits this long for the requests in flight, then closes their connections


def split_revision(model_id: str) -> tuple[str, str | None]:
    """'org/name@rev' -> ('org/name', 'rev'); a local path is kept whole (an '@' in it is part of the path)."""
    if os.path.exists(model_id):
        return model_id, None
    repo, _, revision = model_id.partition("@")
    return repo, revision or None


# transformers 5.25 loads models with a ModelLoader (in the model's own process); earlier releases with the
# ModelManager itself. Either way the methods that load are the ones overridden here.
LOADING_BASE = getattr(transformers_model_manager, "ModelLoader", transformers_model_manager.ModelManager)


class NanoGPTLoading(LOADING_BASE):
    """transformers' model loading, with the model through AutoModelForCausalLM and the tokenizer through
    AutoTokenizer (trust_remote_code only as the server was told). transformers passes the model's name as its
    release writes it: MODEL, or MODEL@revision."""

    def _load_model(self, model_id: str, *args, **kwargs):
        repo, revision = split_revision(model_id)
        model = AutoModelForCausalLM.from_pretrained(
            repo,
            revision=revision,
            dtype=self.dtype,
            attn_implementation=self.attn_implementation,
            trust_remote_code=self.trust_remote_code,
        )
        # decoding's fastest CPU products, as generate, sample and chat attach them (F.linear elsewhere)
        return attach_cpu_decode(model.to(self.device).eval())

    def _load_processor(self, model_id: str, *args, **kwargs):  # the name up to 5.24
        repo, revision = split_revision(model_id)
        return AutoTokenizer.from_pretrained(repo, revision=revision, trust_remote_code=self.trust_remote_code)

    load_processor = _load_processor  # the name from 5.25

    # Up to 5.24 the manager is this class: it serves MODEL under the name it was given, and lists that alone
    @staticmethod
    def process_model_name(model_id: str) -> str:
        return model_id

    def list_models(self, *args, **kwargs) -> list[dict]:
        return [{"id": self.force_model, "object": "model", "created": 0, "owned_by": "hf-nanogpt"}]

    get_gen_models = list_models  # 5.18's name; it lists the Hub cache, where a local folder is not


def keyword_arguments(function, **available) -> dict:
    """Those of `available` that `function` takes: the serving classes' parameters differ between releases."""
    parameters = inspect.signature(function).parameters
    return {name: value for name, value in available.items() if name in parameters}


class RequestError(Exception):
    """A request turned away: its HTTP status and a message for the client (OpenAI's error format)."""

    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param

    def body(self) -> bytes:
        kinds = {404: "not_found_error", 413: "request_too_large", 503: "server_error"}
        kind = kinds.get(self.status, "invalid_request_error")
        error = {"message": self.message, "type": kind, "param": self.param, "code": self.status}
        return json.dumps({"error": error}).encode()


TYPES = {  # field -> (accepted types, what the message calls them)
    "model": ((str,), "a string"),
    "prompt": ((str,), "a string"),
    "messages": ((list,), "a list of messages"),
    "max_tokens": ((int,), "an integer"),
    "max_completion_tokens": ((int,), "an integer"),
    "temperature": ((int, float), "a number"),
    "top_p": ((int, float), "a number"),
    "frequency_penalty": ((int, float), "a number"),
    "seed": ((int,), "an integer"),
    "n": ((int,), "an integer"),
    "stream": ((bool,), "true or false"),
    "stop": ((str, list), "a string or a list of strings"),
}


def json_type(value) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "an object", type(None): "null"}.get(type(value), type(value).__name__)


def check_types(body: dict, required: tuple[str, ...]) -> None:
    for name in required:
        if body.get(name) is None:
            raise RequestError(400, f"the request has no `{name}`: it is required.", name)
    for name, value in body.items():
        if name not in TYPES or value is None:
            continue
        types, expected = TYPES[name]
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            raise RequestError(400, f"`{name}` must be {expected}, found {json_type(value)}: {value!r}.", name)
    if body.get("temperature") is not None and not 0 <= body["temperature"] <= 2:
        raise RequestError(
            400, f"`temperature` must be between 0 and 2 (0: greedy), found {body['temperature']}.", "temperature"
        )
    if body.get("top_p") is not None and not 0 < body["top_p"] <= 1:
        raise RequestError(400, f"`top_p` must be in (0, 1], found {body['top_p']}.", "top_p")
    if body.get("n") not in (None, 1):
        raise RequestError(400, f"`n` must be 1 (one choice per request), found {body['n']}.", "n")
    stop = body.get("stop")
    if isinstance(stop, list) and not all(isinstance(s, str) for s in stop):
        raise RequestError(400, "`stop` must be a string or a list of strings.", "stop")
    if "generation_config" in body:  # transformers' extension: it could set any length, past the checks here
        raise RequestError(
            400, "`generation_config` is not taken by this server: use max_tokens, temperature, top_p, seed, stop.",
            "generation_config",
        )


class RequestChecks:
    """An ASGI middleware in front of transformers' app: the endpoints served, and each request's body checked
    (and its max_tokens filled in) before a handler sees it."""

    def __init__(
        self, app, served_name: str, tokenizer, block_size: int, max_body_bytes: int, on_shutdown=None,
        shared_sampling: "SharedSampling | None" = None,
    ):
        self.app, self.served_name, self.tokenizer = app, served_name, tokenizer
        self.block_size, self.max_body_bytes, self.on_shutdown = block_size, max_body_bytes, on_shutdown
        self.shared_sampling = shared_sampling
        # the checks tokenize: off the event loop, one at a time (one tokenizer; requests checked in arrival order)
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="request-checks")

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan" and self.on_shutdown is not None:
            return await self.app(scope, self.stopping_first(receive), send)
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        try:
            method = ENDPOINTS.get(scope["path"])
            if method is None:
                served = ", ".join(f"{m} {path}" for path, m in ENDPOINTS.items())
                raise RequestError(404, f"no endpoint {scope['path']}: this server answers {served}.")
            if scope["method"] != method and not (scope["method"] in ("HEAD", "OPTIONS") and method == "GET"):
                raise RequestError(405, f"{scope['path']} takes {method}, not {scope['method']}.")
            if method == "GET":
                return await self.app(scope, receive, send)
            body = await self.read_body(scope, receive)
            checked = await asyncio.get_running_loop().run_in_executor(self.executor, self.check, scope["path"], body)
        except RequestError as error:
            return await self.send_error(send, error)
        response = Response(send)
        try:
            await self.app(with_content_length(scope, len(checked)), replay(checked, receive), response.send)
        except asyncio.CancelledError:  # the server stopping (Ctrl-C) with this request in flight
            await response.end("the server is stopping (Ctrl-C or SIGTERM): send the request again once it is back.")

    def stopping_first(self, receive):
        """The lifespan's `receive`, which stops generating (`on_shutdown`) when the server shuts down, while the
        event loop the generation reports to still runs."""

        async def receive_and_stop():
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                await asyncio.to_thread(self.on_shutdown)
            return message

        return receive_and_stop

    async def read_body(self, scope, receive) -> bytes:
        limit = self.max_body_bytes
        too_large = f"the request body is larger than this server takes ({limit} bytes, --max-body-bytes)"
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise RequestError(413, f"{too_large}: {int(declared)} bytes.")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise RequestError(400, "the client left before the body was read.")
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > limit:
                raise RequestError(413, f"{too_large}.")
            if not message.get("more_body", False):
                return b"".join(chunks)

    def check(self, path: str, raw: bytes) -> bytes:
        """The body as the handler gets it (JSON), or RequestError."""
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise RequestError(400, f"the body is not JSON ({err}): send a JSON object.") from None
        if not isinstance(body, dict):
            raise RequestError(400, f"the body must be a JSON object, found {json_type(body)}.")
        chat = path == "/v1/chat/completions"
        check_types(body, ("model", "messages") if chat else ("model", "prompt"))
        if body["model"] != self.served_name:
            raise RequestError(
                404, f"model {body['model']!r} is not served here: this server serves {self.served_name!r} "
                "(GET /v1/models); put that in the request's `model`.", "model",
            )
        prompt_tokens = self.chat_prompt_tokens(body["messages"]) if chat else self.prompt_tokens(body["prompt"])
        self.fill_max_tokens(body, prompt_tokens, chat)
        if self.shared_sampling is not None:
            self.shared_sampling.check(body)
        return json.dumps(body).encode()

    def prompt_tokens(self, prompt: str) -> int:
        try:  # the prompt's ids as generate and chat encode it: a character a char-level vocabulary lacks is named
            count = len(encode_text(self.tokenizer, prompt))
        except ValueError as err:
            raise RequestError(400, str(err), "prompt") from None
        if count == 0:
            raise RequestError(400, "the prompt encodes to no tokens: send at least one (e.g. '\\n').", "prompt")
        return count

    def chat_prompt_tokens(self, messages: list) -> int:
        if not self.tokenizer.chat_template:
            raise RequestError(
                400, f"{self.served_name} has no chat template, so it knows no turns to take: use /v1/completions "
                "with a prompt, or fine-tune a chat model on conversations (docs/chat.md).",
            )
        if not messages:
            raise RequestError(400, "`messages` is empty: send at least one message.", "messages")
        for i, message in enumerate(messages):
            content = message.get("content") if isinstance(message, dict) else None
            text_parts = isinstance(content, list) and all(
                isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
                for part in content
            )
            if not isinstance(message, dict) or not isinstance(message.get("role"), str) or not (
                isinstance(content, str) or text_parts
            ):
                raise RequestError(
                    400, f"messages[{i}] must be an object with a `role` (a string) and a `content` (a string, or a "
                    f"list of text parts), found {json.dumps(message)[:200]}.", "messages",
                )
        # the messages as transformers' chat handler gives them to the template
        conversation = BaseHandler.get_processor_inputs_from_messages(messages, Modality.LLM)
        try:
            encoded = self.tokenizer.apply_chat_template(
                conversation, add_generation_prompt=True, tokenize=True, return_dict=True
            )
        except Exception as err:  # the template's own checks (jinja raise_exception), e.g. a role it does not know
            raise RequestError(400, f"the chat template refused the messages: {err}", "messages") from None
        return len(encoded["input_ids"])

    def fill_max_tokens(self, body: dict, prompt_tokens: int, chat: bool) -> None:
        """Checks the prompt and the requested length against block_size, and writes the length as `max_tokens`,
        the field every release's handlers read (5.18's chat handler ignores max_completion_tokens)."""
        block_size = self.block_size
        what = f"the {'chat-templated messages are' if chat else 'prompt is'} {plural(prompt_tokens, 'token')}"
        if prompt_tokens >= block_size:
            raise RequestError(
                400, f"{what}, but the model's block_size is {block_size}, which must hold the prompt and at least "
                f"one new token: shorten it to at most {block_size - 1} tokens (keep its end: that is what the model "
                "continues).", "messages" if chat else "prompt",
            )
        room = block_size - prompt_tokens
        name = "max_completion_tokens" if chat and body.get("max_completion_tokens") is not None else "max_tokens"
        wanted = body.pop("max_completion_tokens", None) if chat else None
        wanted = wanted if wanted is not None else body.get("max_tokens")
        if wanted is not None and wanted < 1:
            raise RequestError(400, f"`{name}` must be at least 1, found {wanted}.", name)
        if wanted is not None and wanted > room:
            raise RequestError(
                400, f"`{name}` is {wanted}, but {what} of the model's block_size {block_size}, which leaves room "
                f"for {plural(room, 'new token')}: ask for at most {room} (or leave it out to get them all).", name,
            )
        body["max_tokens"] = wanted if wanted is not None else room

    @staticmethod
    async def send_error(send, error: RequestError) -> None:
        body = error.body()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": error.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class SharedSampling:
    """Up to 5.24, transformers starts continuous batching with the first request's sampling settings and keeps them
    for every later request: a request asking for others would silently get the first one's (a greedy request
    sampled). It gets a 400 that says so instead."""

    def __init__(self, defaults):
        self.defaults, self.first = defaults, None

    def settings(self, body: dict) -> str:
        temperature, top_p = body.get("temperature"), body.get("top_p")
        if temperature == 0 or (temperature is None and not self.defaults.do_sample):
            return "greedy (temperature 0)"
        temperature = float(self.defaults.temperature if temperature is None else temperature)
        top_p = float((self.defaults.top_p or 1.0) if top_p is None else top_p)
        return f"sampling at temperature {temperature}, top_p {top_p}"

    def check(self, body: dict) -> None:
        asked = self.settings(body)
        self.first = self.first or asked  # RequestChecks checks one request at a time
        if asked != self.first:
            raise RequestError(
                400, f"this server generates every request {self.first}, as its first request asked, but this one "
                f"asks for {asked}: transformers {transformers.__version__} keeps the first request's sampling "
                "settings for continuous batching (5.25 sets them per request). Send the same settings, or restart "
                "the server with --no-continuous-batching.", "temperature",
            )


class Response:
    """An ASGI `send` that knows how far its response went, to end it when the server stops mid-way."""

    def __init__(self, send):
        self._send, self.started, self.complete = send, False, False

    async def send(self, message) -> None:
        self.started = self.started or message["type"] == "http.response.start"
        self.complete = message["type"] == "http.response.body" and not message.get("more_body", False)
        await self._send(message)

    async def end(self, reason: str) -> None:
        if not self.started:
            return await RequestChecks.send_error(self._send, RequestError(503, reason))
        if not self.complete:  # a stream: its last event says why it ends early
            event = json.dumps({"error": {"message": reason, "type": "server_error", "code": 503}})
            await self._send({"type": "http.response.body", "body": f"data: {event}\n\n".encode()})


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def with_content_length(scope: dict, length: int) -> dict:
    headers = [(k, v) for k, v in scope["headers"] if k != b"content-length"]
    return {**scope, "headers": [*headers, (b"content-length", str(length).encode())]}


def replay(body: bytes, receive):
    """An ASGI `receive` that gives `body` first, then what the client sends (its disconnect)."""
    given = False

    async def receive_again():
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return receive_again


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the model loads so that a port in use is said at once."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port} ({err.strerror}): is another server there? Pick another --port")
    sock.set_inheritable(True)
    return sock


def batching_config(block_size: int, max_batch_size: int):
    """Continuous batching's settings: a paged KV cache for `max_batch_size` requests of block_size tokens. Left to
    itself, on the CPU, it would take 80% of the machine's memory."""
    from transformers import ContinuousBatchingConfig

    page_size = min(256, block_size)  # tokens per page, 256 by default: one page holds a small model's context
    return ContinuousBatchingConfig(
        page_size=page_size,
        num_blocks=max_batch_size * -(-block_size // page_size),
        max_requests_per_batch=max_batch_size,
    )


def serve(
    model: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    continuous_batching: bool = True,
    trust_remote_code: bool = False,
    device: str = "cpu",
    dtype: str = "auto",
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_batch_size: int = 32,
    log_level: str = "info",
) -> int:
    """Serves `model` until Ctrl-C (or SIGTERM); returns 0 then. Raises OSError / ValueError for a model that does
    not load or a port in use (the CLI says them and exits with 2)."""
    repo, revision = split_revision(model)
    # The model's config and tokenizer here first, for the request checks: a model that is not there fails now
    try:
        config = AutoConfig.from_pretrained(repo, revision=revision, trust_remote_code=trust_remote_code)
    except ValueError as err:
        if trust_remote_code or "trust_remote_code" not in str(err):
            raise
        raise ValueError(
            f"{model} loads only through its own code (its config's model_type is not one transformers or "
            "hf_nanogpt knows): read its .py files, and pass --trust-remote-code to run them."
        ) from None
    tokenizer = AutoTokenizer.from_pretrained(repo, revision=revision, trust_remote_code=trust_remote_code)
    block_size = config.max_position_embeddings
    sock = bind(host, port)
    settings = dict(
        device=device,
        dtype=dtype,
        trust_remote_code=trust_remote_code,
        continuous_batching=continuous_batching,
        model_timeout=-1,  # one model, loaded for as long as the server runs
        force_model=model,
    )
    generation_state = GenerationState(
        **keyword_arguments(
            GenerationState,
            continuous_batching=continuous_batching,
            cb_config=batching_config(block_size, max_batch_size) if continuous_batching else None,
        )
    )
    if LOADING_BASE is transformers_model_manager.ModelManager:  # up to 5.24: the manager loads
        manager = NanoGPTLoading(**keyword_arguments(NanoGPTLoading, **settings))
    else:  # 5.25: a ModelManager runs the model in a process of its own, loaded by our loader
        loader = NanoGPTLoading(**keyword_arguments(NanoGPTLoading, **settings))
        manager = transformers_model_manager.ModelManager(
            loader, generation_state, **keyword_arguments(transformers_model_manager.ModelManager, **settings)
        )
    handlers = dict(
        chat_handler=ChatCompletionHandler(model_manager=manager, generation_state=generation_state),
        completion_handler=CompletionHandler(model_manager=manager, generation_state=generation_state),
        generation_state=generation_state,
    )
    # the other endpoints of transformers' app (responses, transcriptions, load_model, reset, ...) are not served:
    # RequestChecks answers them 404, so their handlers are never called
    others = {name: None for name in inspect.signature(build_server).parameters if name.endswith("_handler")}
    app = build_server(manager, **keyword_arguments(build_server, **{**others, **handlers}))
    stop_generating = None
    if hasattr(generation_state, "shutdown"):  # up to 5.24 (5.25 stops the model's process with the app)
        stop_generating = functools.partial(stop_batching_worker, generation_state)
    shared_sampling = None
    if continuous_batching and hasattr(getattr(serving_utils, "CBGenerateManager", None), "init_cb"):
        try:
            defaults = GenerationConfig.from_pretrained(repo, revision=revision)
        except OSError:  # no generation_config.json: generate() then takes the config's
            defaults = GenerationConfig.from_model_config(config)
        shared_sampling = SharedSampling(defaults)
    app = RequestChecks(
        app, model, tokenizer, block_size, max_body_bytes, on_shutdown=stop_generating, shared_sampling=shared_sampling
    )

    server = uvicorn.Server(
        uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS)
    )
    batching = "continuous batching" if continuous_batching else "one request at a time (no continuous batching)"
    if shared_sampling is not None:
        print(
            f"note: transformers {transformers.__version__} keeps the first request's sampling settings (temperature, "
            "top_p) for every request under continuous batching: requests asking for others get a 400. For mixed "
            "settings, serve with --no-continuous-batching, or use transformers 5.25, which sets them per request.",
            file=sys.stderr,
        )
    print(f"serving {model} on http://{host}:{port}/v1 ({batching}); Ctrl-C stops", file=sys.stderr, flush=True)
    # uvicorn catches SIGINT and SIGTERM, shuts down, then raises the signal again: both end here, as Ctrl-C
    previous = signal.signal(signal.SIGTERM, stop_as_interrupt)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        if stop_generating is not None:  # a second time does nothing; this one for an app that never started
            stop_generating()
        manager.shutdown()
        sock.close()
        signal.signal(signal.SIGTERM, previous)
    return 0


def stop_batching_worker(generation_state) -> None:
    """Up to 5.24 the continuous batching worker belongs to the GenerationState, which transformers' app never
    stops, and whose own stop waits 2 s for the requests in flight to finish. Those were answered already (see
    `Response.end`): the worker stops now, without finishing them."""
    manager = getattr(getattr(generation_state, "_cb_manager", None), "_cb", None)
    if manager is not None and manager.is_running() and "hard_stop" in inspect.signature(manager.stop).parameters:
        manager.stop(block=True, timeout=60, hard_stop=True)
    elif manager is None or manager.is_running():
        generation_state.shutdown()


def stop_as_interrupt(signum, frame):
    raise KeyboardInterrupt
