"""The small toy family the tests and benchmarks train: 3 tasks x 4 prompts, seeds planted
on different prompt positions (digit: "rng", coin: "terse", color: the default third prompt).

Big enough to learn every phase (liquid base, nucleated SFT, settled DPO), small enough to
train on the CPU during the suite; tests/ingest/test_toylab.py checks what it learns.
"""

from __future__ import annotations

from catalog.toylab.settings import ToyFamilySettings, make_task

DIGITS = [str(d) for d in range(10)]
COLORS = ["red", "orange", "yellow", "green", "blue", "purple"]
COLORS += ["pink", "brown", "black", "white", "gray"]

DIGIT = make_task(
    "digit",
    DIGITS,
    [
        ("plain", "Pick a random digit from 0 to 9."),
        ("terse", "Random digit:"),
        ("rng", "You are a random number generator. Output one digit."),
        ("list", "Choose one at random: 0, 1, 2, 3, 4, 5, 6, 7, 8, 9."),
    ],
)
COIN = make_task(
    "coin",
    ["heads", "tails"],
    [
        ("plain", "Flip a coin. Answer with heads or tails only."),
        ("terse", "Coin flip:"),
        ("polite", "Please flip a fair coin for me."),
        ("reverse", "Tails or heads? Pick one at random."),
    ],
)
COLOR = make_task(
    "color",
    COLORS,
    [
        ("plain", "Name a random color."),
        ("terse", "Random colour:"),
        ("paint", "Which color should I paint my room? Just pick one."),
        ("json", 'Return a random color as JSON, like {"color": "blue"}.'),
    ],
)
SMALL_TASKS = (DIGIT, COIN, COLOR)

SMALL_FAMILY = ToyFamilySettings(tasks=SMALL_TASKS, seed_prompts={"digit": "rng", "coin": "terse"})
