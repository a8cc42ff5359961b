"""`mlxm chat -m SmolLM2-135M-Instruct.Q4_1.gguf`, a real published model, driven headless with real key presses:
set up as cmd_chat sets it up (model_arg's load, context length and sampling defaults from the GGUF), one short
exchange whose reply is the model's greedy reply to the same chat prompt, saved under the model's name."""

from __future__ import annotations

import mlxmodels
from app import model_arg
from app.chat_store import Chat, ChatStore, Sampling
from app.tui import ChatApp
from app.tui_widgets import AssistantMessage, StatusBar
from tests.app.pilot import SIZE, FixedMeter, run, send
from tests.gguf_fixture import smollm2  # noqa: F401 (fixture)

QUESTION = "What is the capital of France?"
MAX_TOKENS = 16


def test_chat_with_smollm2(smollm2):  # noqa: F811 (fixture)
    arg = str(smollm2)
    model, tokenizer, folder = model_arg.load(arg)
    limit = model_arg.context_length(folder)
    assert limit == 8192  # llama.context_length, not the 4096 fallback
    sampling = Sampling.from_dict({**model_arg.sampling_defaults(folder), "max_tokens": MAX_TOKENS})
    chat = Chat(model=model_arg.display_name(arg), settings=sampling.to_dict())
    app = ChatApp(model, tokenizer, model_arg.display_name(arg), limit, ChatStore(), chat, meter=FixedMeter())
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": QUESTION}], add_generation_prompt=True,
                                           tokenize=False)
    want = mlxmodels.generate(model, tokenizer, tokenizer.encode(prompt, add_special_tokens=False),
                              max_tokens=MAX_TOKENS, temperature=0.0)

    async def scenario():
        async with app.run_test(size=SIZE) as pilot:
            await send(pilot, QUESTION)
            reply = app.session.messages[1]["content"]
            assert reply == want.strip() and "Paris" in reply
            assert [w.source for w in app.query(AssistantMessage)] == [reply]
            status = str(app.query_one(StatusBar).render())
            assert smollm2.name[:20] in status and f"/{limit}" in status
            saved = ChatStore().load(app.session.chat.id)
            assert saved.model == arg and saved.messages == app.session.messages
    run(scenario())
