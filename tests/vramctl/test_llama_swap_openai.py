"""Conformance: the `openai` Python client (an independent client library) against the llama-swap emulator's
OpenAI routes — the calls the bot's vision check makes, streaming, and llama-swap's errors."""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING

import pytest
from emulators.llama_swap import LlamaSwapEmulator
from images import encode
from PIL import Image

if TYPE_CHECKING:
    import openai  # imported when a test runs: the library takes most of a second, in every worker's collection

CONFIG = {"apiKeys": ["sekret"], "models": {
    "vision": {"cmd": "llama-server --port ${PORT} --mmproj m.gguf", "aliases": ["minicpm-v"], "vram_mib": 4608,
               "vision": True},
    "llama3.1": {"cmd": "llama-server --port ${PORT}", "vram_mib": 2048}}}


@pytest.fixture()
def emu():
    e = LlamaSwapEmulator(CONFIG)
    with e.serve():
        yield e


def client(emu: LlamaSwapEmulator, key: str = "sekret") -> openai.OpenAI:
    import openai

    return openai.OpenAI(base_url=f"{emu.url}/v1", api_key=key, max_retries=0, timeout=10)


def image_part() -> dict:
    uri = "data:image/png;base64," + base64.b64encode(encode(Image.new("RGB", (8, 8), (57, 197, 187)), "PNG")).decode()
    return {"type": "image_url", "image_url": {"url": uri}}


def test_models_list(emu):
    ids = [m.id for m in client(emu).models.list()]
    assert ids == ["llama3.1", "vision"]


def test_chat_with_an_image_part_by_alias(emu):
    seen = {}

    def answer(req):
        seen["images"], seen["text"] = len(req.images), req.text
        return "YES, this is Hatsune Miku."

    emu.set_answer("vision", answer)
    out = client(emu).chat.completions.create(model="minicpm-v", max_tokens=200, temperature=0, messages=[
        {"role": "user", "content": [{"type": "text", "text": "Is this Hatsune Miku?"}, image_part()]}])
    assert out.choices[0].message.content == "YES, this is Hatsune Miku." and out.choices[0].finish_reason == "stop"
    assert out.model == "minicpm-v" and out.usage.total_tokens > 0
    assert seen == {"images": 1, "text": "Is this Hatsune Miku?"} and emu.running() == ["vision"]


def test_stream_true_is_answered_as_server_sent_events(emu):
    emu.set_answer("llama3.1", "hello there, Miku fan")
    stream = client(emu).chat.completions.create(model="llama3.1", stream=True, stream_options={"include_usage": True},
                                                 messages=[{"role": "user", "content": "hi"}])
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "hello there, Miku fan"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4


@pytest.mark.parametrize("envelope", [False, True], ids=["v250", "main-envelope"])
def test_llama_swaps_errors_reach_the_client_as_typed_errors(emu, envelope):
    import openai

    emu.switches.error_envelope = envelope
    with pytest.raises(openai.NotFoundError) as exc:
        client(emu).chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    if envelope:  # main after v250 (#1038) made the body OpenAI-shaped so clients read the message
        assert "no router for requested model" in str(exc.value)
    else:  # v250: `error` is a string, which the client keeps in `body` but not in the message (#1037)
        assert exc.value.body == "no router for requested model" and exc.value.message == "Error code: 404"
    with pytest.raises(openai.AuthenticationError):
        client(emu, key="wrong").models.list()


def test_an_image_for_a_model_without_mmproj_is_a_clear_server_error(emu):
    import openai

    with pytest.raises(openai.InternalServerError, match="mmproj"):
        client(emu).chat.completions.create(model="llama3.1", messages=[
            {"role": "user", "content": [{"type": "text", "text": "what is this?"}, image_part()]}])
