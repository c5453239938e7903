"""End-to-end check of mxserve with the official `openai` Python client.

Usage: e2e.py BASE_URL MODEL   (BASE_URL like http://127.0.0.1:8000/v1)
Exits non-zero with a message on the first failed check.
"""

import sys

import openai


def check(condition, message):
    if not condition:
        raise SystemExit(f"FAILED: {message}")


def main():
    base_url, model = sys.argv[1], sys.argv[2]
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)

    models = client.models.list()
    check([m.id for m in models.data] == [model], f"models: {models}")

    messages = [{"role": "user", "content": "Hello, how are you?"}]
    chat = client.chat.completions.create(model=model, messages=messages, max_tokens=10, temperature=0)
    check(chat.object == "chat.completion", f"chat object: {chat.object}")
    check(chat.choices[0].message.role == "assistant", "chat role")
    check(chat.choices[0].finish_reason in ("stop", "length"), f"finish: {chat.choices[0].finish_reason}")
    check(chat.usage.completion_tokens <= 10, f"usage: {chat.usage}")
    check(chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens, "usage sum")

    stream = client.chat.completions.create(
        model=model, messages=messages, max_tokens=10, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )
    text, finish, usage = "", None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
    check(text == chat.choices[0].message.content, f"streamed chat {text!r} != {chat.choices[0].message.content!r}")
    check(finish == chat.choices[0].finish_reason, f"streamed finish {finish}")
    check(usage is not None and usage.completion_tokens == chat.usage.completion_tokens, f"streamed usage {usage}")

    completion = client.completions.create(model=model, prompt="The sky is", max_tokens=16, temperature=0)
    full = completion.choices[0].text
    check(completion.object == "text_completion", "completion object")
    check(len(full) >= 4, f"completion too short to test stop: {full!r}")

    pieces = [c.choices[0].text for c in client.completions.create(
        model=model, prompt="The sky is", max_tokens=16, temperature=0, stream=True) if c.choices]
    check("".join(pieces) == full, f"streamed completion {''.join(pieces)!r} != {full!r}")

    stop = full[2:4]
    stopped = client.completions.create(model=model, prompt="The sky is", max_tokens=16, temperature=0, stop=[stop])
    check(stopped.choices[0].text == full[: full.index(stop)], f"stop {stop!r}: {stopped.choices[0].text!r} from {full!r}")
    check(stopped.choices[0].finish_reason == "stop", "stop finish_reason")

    seeded = [client.completions.create(model=model, prompt="Once", max_tokens=8, temperature=1.0, seed=5).choices[0].text
              for _ in range(2)]
    check(seeded[0] == seeded[1], f"same seed, different text: {seeded}")

    two = client.chat.completions.create(model=model, messages=messages, max_tokens=4, n=2, seed=1)
    check([c.index for c in two.choices] == [0, 1], "n=2 indices")

    try:
        client.chat.completions.create(model=model, messages=messages, temperature=-1)
        check(False, "negative temperature was accepted")
    except openai.BadRequestError as e:
        check(e.status_code == 400, f"status {e.status_code}")
        check(e.body["param"] == "temperature", f"error body {e.body}")

    try:
        client.chat.completions.create(model="no-such-model", messages=messages)
        check(False, "unknown model was accepted")
    except openai.NotFoundError as e:
        check(e.body["param"] == "model", f"error body {e.body}")

    print("e2e ok")


if __name__ == "__main__":
    main()
