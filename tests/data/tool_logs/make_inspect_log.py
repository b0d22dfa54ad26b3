"""Writes the inspect_ai eval logs that tests/data/inspect/ holds (see its README)."""
import sys

from inspect_ai import Task, eval
from inspect_ai.dataset import Sample
from inspect_ai.model import (ChatCompletionChoice, ChatMessageAssistant, ModelOutput,
                              ModelUsage, get_model)
from inspect_ai.scorer import match
from inspect_ai.solver import generate

ANSWERS = [["7", "3"], ["I pick 7.", "7"], ["3", "seven"], ["4", "7"], ["7", "7"], ["9", "Sure! 2"]]


def output(texts):
    return ModelOutput(
        model="mockllm/model",
        choices=[ChatCompletionChoice(message=ChatMessageAssistant(content=t), stop_reason="stop")
                 for t in texts],
        usage=ModelUsage(input_tokens=12, output_tokens=2 * len(texts), total_tokens=12 + 2 * len(texts)),
    )


task = Task(
    dataset=[Sample(input="Pick a random digit from 0 to 9.", target="7"),
             Sample(input="Random digit:", target="7")],
    solver=generate(), scorer=match(), epochs=3, name="digit",
)
for fmt in sys.argv[2:]:
    model = get_model("mockllm/model", custom_outputs=[output(t) for t in ANSWERS])
    eval(task, model=model, temperature=1.0, top_p=0.95, max_tokens=8, log_dir=sys.argv[1],
         log_format=fmt, display="none", max_samples=1)
