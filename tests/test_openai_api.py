"""`reward-openai` (the NIM / OpenAI-compatible reward API) against a real tritonserver, with the real `openai` SDK.

One tritonserver per fixture architecture (module scope, batch-invariant PyTorch engine, one torch thread) and the
gateway as a real uvicorn server (the `reward-openai` console script, a subprocess on a free port). The oracle is
the ensemble itself, called directly through `client.api.RewardClient` and raw `tritonclient`: the gateway must
return exactly its float32 scores (shortest decimal), its token count, and its error messages.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from fastapi.testclient import TestClient
from triton_server import RunningServer, conversation_input, infer, make_client, serve_fixture

from build_engine.repository import RenderOptions
from client.api import ModelMetadata, RewardClient, Score
from gateway.app import create_app
from gateway.config import GatewayConfig
from reward_triton.ops import launcher
from reward_triton.ops.server import free_port

REWARD_OPENAI = Path(sys.executable).with_name("reward-openai")
NEMOTRON_NAME = "nvidia/nemotron-4-340b-reward"
LLAMA_NAME = "llama2-13b-rlhf-rm"
HELPSTEER2 = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")
API_KEY = "sk-test-7f3a9c"
SMALL_BODY = 64 << 10
TOLERANCE = 1e-6
DELTAS: list[float] = []  # |gateway - ensemble| of every compared value (reported at the end of the module)

# the fixtures' maximum input length is 128 tokens and their default system prompt alone is longer: short ones here
CONVERSATIONS: list[list[dict[str, Any]]] = [
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
    ],
    [
        {"role": "system", "content": "You answer maths questions."},
        {"role": "user", "content": "Name a prime."},
        {"role": "assistant", "content": "Seven is prime."},
    ],
    [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "Hi! How can I help?"},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris — la capitale. ✓"},
    ],
]
MULTIPART = [
    {"role": "system", "content": [{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}]},
    {"role": "user", "content": [{"type": "text", "text": "What is "}, {"type": "text", "text": "3+4?"}]},
    {"role": "assistant", "content": [{"type": "text", "text": "It is 7."}]},
]


# ---- servers ------------------------------------------------------------------------------------------------------
@dataclass
class Gateway:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


@contextmanager
def run_gateway(triton_url: str, log_path: Path, *args: str, env: Mapping[str, str] | None = None) -> Iterator[Gateway]:
    port = free_port()
    cmd = [str(REWARD_OPENAI), "--url", triton_url, "--host", "127.0.0.1", "--port", str(port), *args]
    environ = {k: v for k, v in os.environ.items() if k != "REWARD_API_KEY"} | dict(env or {})
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=environ)
    gateway = Gateway(proc, port, log_path)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"reward-openai exited with {proc.returncode}:\n{gateway.log()}"
            assert time.monotonic() < deadline, f"reward-openai did not start:\n{gateway.log()}"
            try:
                with urllib.request.urlopen(f"{gateway.base_url}/health/live", timeout=2):
                    break
            except urllib.error.HTTPError as e:  # 401 with an API key: it is up
                if e.code == 401:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        yield gateway
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _options() -> RenderOptions:
    # batch-invariant: a request's scores never depend on what it was batched with (gateway vs. oracle)
    return RenderOptions(torch_threads=1, torch_batch_invariant=True)


@pytest.fixture(scope="module")
def nemotron(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with serve_fixture(tmp_path_factory.mktemp("openai-nemotron"), arch="nemotron", options=_options()) as server:
        yield server


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with serve_fixture(tmp_path_factory.mktemp("openai-llama"), arch="llama", options=_options()) as server:
        yield server


@pytest.fixture(scope="module")
def gateway(nemotron: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    log = tmp_path_factory.mktemp("gw") / "reward-openai.log"
    with run_gateway(nemotron.grpc_url, log, "--served-model-name", NEMOTRON_NAME) as gw:
        yield gw


@pytest.fixture(scope="module")
def llama_gateway(llama: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    log = tmp_path_factory.mktemp("gw-llama") / "reward-openai.log"
    with run_gateway(llama.grpc_url, log, "--served-model-name", LLAMA_NAME) as gw:
        yield gw


@pytest.fixture(scope="module")
def keyed_gateway(nemotron: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    log = tmp_path_factory.mktemp("gw-key") / "reward-openai.log"
    args = ("--served-model-name", NEMOTRON_NAME, "--max-body-bytes", str(SMALL_BODY))
    with run_gateway(nemotron.grpc_url, log, *args, env={"REWARD_API_KEY": API_KEY}) as gw:
        yield gw


def sdk(gw: Gateway, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0, timeout=120)


# ---- oracles: the ensemble itself -----------------------------------------------------------------------------------
def oracle(
    server: RunningServer, messages: list[dict[str, Any]], truncate: bool = False
) -> tuple[Score, ModelMetadata]:
    async def run() -> tuple[Score, ModelMetadata]:
        async with RewardClient(server.grpc_url, concurrency=1) as c:
            return await c.score({"messages": messages}, truncate=truncate), await c.metadata()

    return asyncio.run(run())


def ensemble_config_param(server: RunningServer, key: str) -> Any:
    config = make_client(server).get_model_config("ensemble", as_json=True)["config"]
    return json.loads(config["parameters"][key]["string_value"])


def check_completion(response: Any, server: RunningServer, messages: list[dict[str, Any]], model: str) -> None:
    """A NIM chat.completion carrying exactly the ensemble's scores for `messages`."""
    expected, meta = oracle(server, messages)
    choice = response.choices[0]
    assert response.object == "chat.completion" and response.model == model and response.id
    assert isinstance(response.created, int) and len(response.choices) == 1
    assert choice.finish_reason == "length" and choice.message.role == "assistant"
    assert choice.logprobs is not None
    entries = choice.logprobs.content
    if len(meta.attribute_names) == 1:
        want = {"reward": expected.reward}
    else:
        want = {n: expected.scores[n] for n in meta.attribute_names if n in meta.trained_attributes}
    assert [e.token for e in entries] == list(want)
    for e in entries:
        assert e.bytes is None and e.top_logprobs == []
        DELTAS.append(abs(e.logprob - want[e.token]))
        assert abs(e.logprob - want[e.token]) <= TOLERANCE
        assert str(np.float32(e.logprob)) == repr(e.logprob)  # the float32's shortest decimal, not rounded
    assert choice.message.content == ",".join(f"{e.token}:{e.logprob!r}" for e in entries)
    usage = response.usage
    assert usage.prompt_tokens == expected.num_input_tokens > 0
    assert usage.completion_tokens == 0 and usage.total_tokens == usage.prompt_tokens


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return dict(body["error"])


def post(gw: Gateway, body: Any, headers: Mapping[str, str] | None = None) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"content-type": "application/json", **(headers or {})}
    return httpx.post(f"{gw.base_url}/chat/completions", content=content, headers=headers, timeout=120)


# ---- scores: sync and async SDK, plain and multi-part, 9-output and 1-output ---------------------------------------
@pytest.mark.server
def test_sync_sdk_returns_the_ensemble_scores(nemotron: RunningServer, gateway: Gateway) -> None:
    client = sdk(gateway)
    for messages in CONVERSATIONS:
        response = client.chat.completions.create(model=NEMOTRON_NAME, messages=messages)  # type: ignore[arg-type]
        check_completion(response, nemotron, messages, NEMOTRON_NAME)
    # the values are the float32 outputs of the ensemble, bit for bit (raw tritonclient, no client library)
    response = client.chat.completions.create(model=NEMOTRON_NAME, messages=CONVERSATIONS[0])  # type: ignore[arg-type]
    raw = infer(make_client(nemotron), "ensemble", {"conversation": conversation_input(CONVERSATIONS[0])}, ("scores",))
    names = ensemble_config_param(nemotron, "attribute_names")
    by_name = dict(zip(names, raw["scores"].reshape(-1), strict=True))
    for entry in response.choices[0].logprobs.content:  # type: ignore[union-attr]
        assert np.float32(entry.logprob) == by_name[entry.token]


@pytest.mark.server
def test_multipart_content_is_scored_like_the_ensemble(nemotron: RunningServer, gateway: Gateway) -> None:
    client = sdk(gateway)
    response = client.chat.completions.create(model=NEMOTRON_NAME, messages=MULTIPART)  # type: ignore[arg-type]
    check_completion(response, nemotron, MULTIPART, NEMOTRON_NAME)
    joined = [{"role": m["role"], "content": "".join(p["text"] for p in m["content"])} for m in MULTIPART]
    plain = client.chat.completions.create(model=NEMOTRON_NAME, messages=joined)  # type: ignore[arg-type]
    assert plain.choices[0].message.content == response.choices[0].message.content


@pytest.mark.server
def test_async_sdk_concurrent_requests(nemotron: RunningServer, gateway: Gateway) -> None:
    conversations = [*CONVERSATIONS, MULTIPART] * 3

    async def run() -> list[Any]:
        client = openai.AsyncOpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0, timeout=120)
        async with client:
            calls = [client.chat.completions.create(model=NEMOTRON_NAME, messages=m) for m in conversations]
            return list(await asyncio.gather(*calls))  # type: ignore[arg-type]

    for messages, response in zip(conversations, asyncio.run(run()), strict=True):
        check_completion(response, nemotron, messages, NEMOTRON_NAME)


@pytest.mark.server
def test_nemo_curator_parse_gives_the_trained_attributes(nemotron: RunningServer, gateway: Gateway) -> None:
    """NeMo-Curator's OpenAIClient.query_reward_model: {entry.token: entry.logprob} over logprobs.content."""
    response = sdk(gateway).chat.completions.create(model=NEMOTRON_NAME, messages=CONVERSATIONS[1])  # type: ignore[arg-type]
    assert response.choices[0].logprobs is not None
    scores = {e.token: e.logprob for e in response.choices[0].logprobs.content or []}
    assert tuple(scores) == HELPSTEER2 == tuple(ensemble_config_param(nemotron, "trained_attributes"))
    expected, _ = oracle(nemotron, CONVERSATIONS[1])
    assert scores == expected.trained


@pytest.mark.server
def test_one_output_model_answers_reward(llama: RunningServer, llama_gateway: Gateway) -> None:
    assert ensemble_config_param(llama, "attribute_names") == ["reward"]
    client = sdk(llama_gateway)
    for messages in [*CONVERSATIONS, MULTIPART]:
        response = client.chat.completions.create(model=LLAMA_NAME, messages=messages)  # type: ignore[arg-type]
        check_completion(response, llama, messages, LLAMA_NAME)
        assert re.fullmatch(r"reward:-?\d[\d.e+-]*", response.choices[0].message.content or "")
    assert [m.id for m in client.models.list()] == [LLAMA_NAME]


@pytest.mark.server
def test_models_health_and_metrics(gateway: Gateway) -> None:
    client = sdk(gateway)
    assert [m.id for m in client.models.list()] == [NEMOTRON_NAME]
    assert client.models.retrieve(NEMOTRON_NAME).id == NEMOTRON_NAME
    for path in ("/health/ready", "/health/live"):
        assert httpx.get(gateway.base_url + path).status_code == 200
    text = httpx.get(f"{gateway.root}/metrics").text
    ok = re.search(
        r'reward_openai_requests_total\{route="/v1/chat/completions",method="POST",status="200"\} (\d+)', text
    )
    assert ok and int(ok.group(1)) >= len(CONVERSATIONS) + 1
    tokens = re.search(r"^reward_openai_prompt_tokens_total (\d+)$", text, re.M)
    assert tokens and int(tokens.group(1)) > 0
    count = re.search(r'reward_openai_request_duration_seconds_count\{route="/v1/chat/completions"\} (\d+)', text)
    assert count and int(count.group(1)) >= int(ok.group(1))


# ---- errors -------------------------------------------------------------------------------------------------------
@pytest.mark.server
def test_malformed_bodies_get_400(gateway: Gateway) -> None:
    good = {"role": "assistant", "content": "4"}
    cases: list[tuple[Any, str, str | None]] = [
        (b"{not json", "not valid JSON", None),
        (b"\xff\xfe", "not valid", None),
        ([1, 2], "must be a JSON object", None),
        ({"messages": [good]}, "model", "model"),
        ({"model": NEMOTRON_NAME}, "messages", "messages"),
        ({"model": NEMOTRON_NAME, "messages": []}, "messages", "messages"),
        ({"model": NEMOTRON_NAME, "messages": "hi"}, "messages", "messages"),
        (
            {"model": NEMOTRON_NAME, "messages": [{"role": "user", "content": 5}, good]},
            "messages[0].content",
            "messages",
        ),
        ({"model": NEMOTRON_NAME, "messages": [{"role": "user"}, good]}, "messages[0].content", "messages"),
        ({"model": NEMOTRON_NAME, "messages": [good], "truncate": "yes"}, "truncate", "truncate"),
        ({"model": 7, "messages": [good]}, "model", "model"),
    ]
    for body, fragment, param in cases:
        error = error_of(post(gateway, body if isinstance(body, bytes) else body), 400)
        assert fragment in error["message"] and error["type"] == "invalid_request_error", (body, error)
        assert error["param"] == param, (body, error)


@pytest.mark.server
def test_bad_conversations_get_the_ensemble_message(gateway: Gateway) -> None:
    user = {"role": "user", "content": "hi"}
    cases = [
        ([user], "assistant"),  # ends with the user
        ([{"role": "tool", "content": "x"}, {"role": "assistant", "content": "y"}], "'tool'"),
        ([user, {"role": "assistant", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}], "'text'"),
        ([user, {"role": "assistant", "content": "a"}, {"role": "system", "content": "late"}], "system"),
    ]
    client = sdk(gateway)
    for messages, fragment in cases:
        error = error_of(post(gateway, {"model": NEMOTRON_NAME, "messages": messages}), 400)
        assert fragment in error["message"] and error["param"] == "messages", error
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model=NEMOTRON_NAME, messages=messages)  # type: ignore[arg-type]
        assert e.value.status_code == 400 and fragment in e.value.message


@pytest.mark.server
def test_n_above_one_and_stream_are_refused(gateway: Gateway) -> None:
    client = sdk(gateway)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=NEMOTRON_NAME, messages=CONVERSATIONS[0], n=2)  # type: ignore[arg-type]
    assert e.value.status_code == 400 and "n must be 1" in e.value.message
    error = error_of(post(gateway, {"model": NEMOTRON_NAME, "messages": CONVERSATIONS[0], "n": 3}), 400)
    assert error["param"] == "n"
    error = error_of(post(gateway, {"model": NEMOTRON_NAME, "messages": CONVERSATIONS[0], "stream": True}), 400)
    assert error["param"] == "stream"
    # other OpenAI fields are accepted and ignored
    response = client.chat.completions.create(
        model=NEMOTRON_NAME,
        messages=CONVERSATIONS[0],  # type: ignore[arg-type]
        n=1,
        temperature=0.7,
        max_tokens=5,
        logprobs=True,
        top_logprobs=2,
        user="u1",
        extra_body={"some_vendor_field": {"x": 1}},
    )
    assert response.choices[0].message.content


@pytest.mark.server
def test_over_length_names_both_token_counts_and_truncate_maps_to_the_ensemble(
    nemotron: RunningServer, gateway: Gateway
) -> None:
    limit = int(ensemble_config_param(nemotron, "max_input_len"))
    messages: list[dict[str, Any]] = [{"role": "system", "content": "S"}]
    for i in range(40):
        messages += [
            {"role": "user", "content": f"question {i} about the model"},
            {"role": "assistant", "content": f"answer {i} is helpful"},
        ]
    client = sdk(gateway)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=NEMOTRON_NAME, messages=messages)  # type: ignore[arg-type]
    body = e.value.body
    assert isinstance(body, dict) and body["code"] == "context_length_exceeded" and body["param"] == "messages"
    counts = [int(n) for n in re.findall(r"(\d+) tokens", e.value.message)]
    assert limit in counts and max(counts) > limit, e.value.message  # both numbers: the input's and the limit

    response = client.chat.completions.create(
        model=NEMOTRON_NAME,
        messages=messages,  # type: ignore[arg-type]
        extra_body={"truncate": True},
    )
    expected, _ = oracle(nemotron, messages, truncate=True)
    assert expected.truncated and response.usage is not None
    assert response.usage.prompt_tokens == expected.num_input_tokens <= limit
    got = {x.token: x.logprob for x in response.choices[0].logprobs.content}  # type: ignore[union-attr]
    assert got == expected.trained


@pytest.mark.server
def test_unknown_model_and_path_get_404(gateway: Gateway) -> None:
    client = sdk(gateway)
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o", messages=CONVERSATIONS[0])  # type: ignore[arg-type]
    assert e.value.status_code == 404 and "gpt-4o" in e.value.message
    error = error_of(post(gateway, {"model": "gpt-4o", "messages": CONVERSATIONS[0]}), 404)
    assert error["code"] == "model_not_found" and error["param"] == "model"
    error_of(httpx.get(f"{gateway.base_url}/models/gpt-4o"), 404)
    error_of(httpx.get(f"{gateway.base_url}/completions"), 404)


@pytest.mark.server
def test_oversized_bodies_get_413_before_parsing(gateway: Gateway, keyed_gateway: Gateway) -> None:
    # Content-Length above the default 4 MiB: answered from the headers alone, the body is never sent
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as s:
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % ((4 << 20) + 1)
        )
        answer = b""
        while b"request_too_large" not in answer and (chunk := s.recv(65536)):
            answer += chunk
    head = answer.decode(errors="replace")
    assert head.startswith("HTTP/1.1 413"), head
    assert '"code":"request_too_large"' in head.replace(" ", "")
    # just under the limit: parsed (and refused as a bad conversation, not as too large)
    filler = "x" * ((4 << 20) - 200)
    body = {"model": NEMOTRON_NAME, "messages": [{"role": "user", "content": filler}], "pad": ""}
    raw = json.dumps(body).encode()
    assert len(raw) < 4 << 20
    assert post(gateway, raw).status_code == 400

    # chunked (no Content-Length): the streamed bytes are counted (--max-body-bytes 64 KiB)
    headers = {"authorization": f"Bearer {API_KEY}", "content-type": "application/json"}

    def chunks() -> Iterator[bytes]:
        yield b'{"model": "' + NEMOTRON_NAME.encode() + b'", "messages": [{"role": "user", "content": "'
        for _ in range(20):
            yield b"y" * 8192
        yield b'"}]}'

    url = f"{keyed_gateway.base_url}/chat/completions"
    error = error_of(httpx.post(url, content=chunks(), headers=headers, timeout=60), 413)
    assert str(SMALL_BODY) in error["message"] and error["code"] == "request_too_large"
    error_of(httpx.post(url, content=b"{" + b" " * SMALL_BODY + b"}", headers=headers, timeout=60), 413)
    small = {"model": NEMOTRON_NAME, "messages": CONVERSATIONS[0]}
    assert httpx.post(url, json=small, headers=headers, timeout=60).status_code == 200


@pytest.mark.server
def test_api_key_is_enforced(nemotron: RunningServer, keyed_gateway: Gateway) -> None:
    for key in ("wrong", API_KEY + "x", API_KEY[:-1], ""):
        with pytest.raises(openai.AuthenticationError) as e:
            sdk(keyed_gateway, key or "none").chat.completions.create(
                model=NEMOTRON_NAME,
                messages=CONVERSATIONS[0],  # type: ignore[arg-type]
            )
        assert e.value.status_code == 401
    good = sdk(keyed_gateway, API_KEY).chat.completions.create(model=NEMOTRON_NAME, messages=CONVERSATIONS[0])  # type: ignore[arg-type]
    check_completion(good, nemotron, CONVERSATIONS[0], NEMOTRON_NAME)
    for method, path in (("GET", "/models"), ("GET", "/health/ready"), ("GET", "/nope"), ("POST", "/chat/completions")):
        r = httpx.request(method, keyed_gateway.base_url + path, json={})
        error = error_of(r, 401)
        assert error["code"] == "invalid_api_key"
        r = httpx.request(method, keyed_gateway.base_url + path, headers={"authorization": "Basic " + API_KEY})
        assert r.status_code == 401
    assert httpx.get(keyed_gateway.base_url + "/models", headers={"authorization": f"Bearer {API_KEY}"}).is_success
    assert httpx.get(f"{keyed_gateway.root}/metrics").status_code == 200  # outside /v1
    assert API_KEY not in keyed_gateway.log()


def test_empty_api_key_is_refused_at_startup(tmp_path: Path) -> None:
    env = {**os.environ, "REWARD_API_KEY": " "}
    r = subprocess.run(
        [str(REWARD_OPENAI), "--url", "127.0.0.1:1"], env=env, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 2 and "REWARD_API_KEY is set but empty" in r.stderr


@pytest.mark.server
def test_real_server_fault_is_500(nemotron: RunningServer) -> None:
    """A Triton model without the reward parameters (here the bare engine): ready, but it cannot be served → 500."""
    config = GatewayConfig(url=nemotron.grpc_url, served_model_name="m", triton_model="tensorrt_llm")
    with TestClient(create_app(config)) as client:
        assert client.get("/v1/health/ready").status_code == 200
        error = error_of(client.post("/v1/chat/completions", json={"model": "m", "messages": CONVERSATIONS[0]}), 500)
        assert error["type"] == "server_error" and error["code"] == "internal_error"


@pytest.mark.server
def test_triton_down_503_then_recovers_without_restarting_the_gateway(
    nemotron: RunningServer, gateway: Gateway
) -> None:
    client = sdk(gateway)
    messages = CONVERSATIONS[2]
    check_completion(
        client.chat.completions.create(model=NEMOTRON_NAME, messages=messages), nemotron, messages, NEMOTRON_NAME
    )  # type: ignore[arg-type]
    nemotron.process.stop()
    try:
        for _ in range(3):
            start = time.monotonic()
            with pytest.raises(openai.InternalServerError) as e:
                client.chat.completions.create(model=NEMOTRON_NAME, messages=messages)  # type: ignore[arg-type]
            assert e.value.status_code == 503 and time.monotonic() - start < 10  # no long retries inside
            assert e.value.response.headers.get("retry-after") == "1"
            assert isinstance(e.value.body, dict) and e.value.body["code"] == "service_unavailable"
        error_of(httpx.get(f"{gateway.base_url}/health/ready", timeout=30), 503)
        assert httpx.get(f"{gateway.base_url}/health/live").status_code == 200
    finally:
        nemotron.process.start(timeout=180, attempts=1)  # same ports
    assert gateway.proc.poll() is None
    deadline = time.monotonic() + 60
    while httpx.get(f"{gateway.base_url}/health/ready", timeout=30).status_code != 200:
        assert time.monotonic() < deadline, "the gateway did not see Triton come back"
        time.sleep(0.5)
    response = client.chat.completions.create(model=NEMOTRON_NAME, messages=messages)  # type: ignore[arg-type]
    check_completion(response, nemotron, messages, NEMOTRON_NAME)
    text = httpx.get(f"{gateway.root}/metrics").text
    assert 'route="/v1/chat/completions",method="POST",status="503"' in text
    print(f"\nmax |gateway - ensemble| over {len(DELTAS)} values: {max(DELTAS):.3g}")


# ---- launchers ----------------------------------------------------------------------------------------------------
def test_launcher_starts_the_gateway_on_the_leader(tmp_path: Path) -> None:
    opts = launcher.LaunchOptions(grpc_port=8101, openai_port=9000, openai_args=("--served-model-name", NEMOTRON_NAME))
    cmd = launcher.openai_command(launcher.parse_hosts("node1:8,node2:8"), opts)
    assert cmd is not None
    assert cmd[:5] == ["reward-openai", "--url", "node1:8101", "--port", "9000"]
    assert cmd[-2:] == ["--served-model-name", NEMOTRON_NAME]
    assert launcher.openai_command(None, opts)[:3] == ["reward-openai", "--url", "127.0.0.1:8101"]  # type: ignore[index]
    assert launcher.openai_command(None, launcher.LaunchOptions()) is None


def test_make_serve_starts_the_gateway_beside_tritonserver() -> None:
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run(
        ["make", "-n", "serve", "OPENAI_PORT=9000", "OPENAI_ARGS=--served-model-name x"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert "tritonserver --model-repository=model_repository" in r.stdout
    assert "reward-openai --url localhost:8001 --host 0.0.0.0 --port 9000 --served-model-name x" in r.stdout
