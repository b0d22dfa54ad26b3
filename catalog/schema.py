"""The catalog's ORM schema (SQLAlchemy 2 typed models).

Tables: families -> models (ordered stages), tasks -> prompts, runs (one per work unit, with
provenance), completions (raw texts with counts), option_counts (normalized counts) and
exact_probs (exact-mode probabilities, kept apart from sampled counts).

Constraint names come from one naming convention so that migrations can refer to them on
every database. Timestamps are stored in UTC and read back as aware datetimes.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from catalog.enums import (
    INVALID_REASONS,
    PROMPT_FORMATS,
    RUN_MODES,
    RUN_STATUSES,
    TASK_KINDS,
    sql_in,
)

# The run columns that count invalid samples by reason, in INVALID_REASONS order.
INVALID_REASON_COLUMNS = tuple(f"n_{reason}" for reason in INVALID_REASONS)

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC; SQLite keeps no zone, so aware-ness is restored on read."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(timezone.utc)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON, list[Any]: JSON}


class Family(Base):
    """A post-training pipeline whose stages are compared (e.g. OLMo 2 7B)."""

    __tablename__ = "families"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    description: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    models: Mapped[list[Model]] = relationship(back_populates="family", order_by="Model.stage_order")


class Model(Base):
    """One stage of a family: a checkpoint on the hub, a local directory, or imported counts."""

    __tablename__ = "models"
    __table_args__ = (
        # A stage is one model, or several checkpoints with distinct steps; at most one model
        # of a stage has no step (NULLs are distinct in a unique constraint: a partial index).
        UniqueConstraint("family_id", "stage", "step"),
        Index(
            "uq_models_family_id_stage_final", "family_id", "stage", unique=True,
            sqlite_where=text("step IS NULL"), postgresql_where=text("step IS NULL"),
        ),
        CheckConstraint("stage_order >= 0", name="stage_order_nonnegative"),
        CheckConstraint("step IS NULL OR step >= 0", name="step_nonnegative"),
        CheckConstraint(sql_in("prompt_format", PROMPT_FORMATS), name="prompt_format_known"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    family_id: Mapped[int] = mapped_column(ForeignKey("families.id"), index=True)
    stage: Mapped[str] = mapped_column(String(100))
    stage_order: Mapped[int] = mapped_column(Integer)
    # A checkpoint of the stage: its training step (or tokens). NULL: the stage's one model.
    step: Mapped[int | None] = mapped_column(BigInteger)
    # Hub id or local path; NULL for models known only through imported counts.
    source: Mapped[str | None] = mapped_column(String(1000))
    revision: Mapped[str | None] = mapped_column(String(200))
    prompt_format: Mapped[str] = mapped_column(String(10), default="chat")
    gguf_file: Mapped[str | None] = mapped_column(String(500))
    trust_remote_code: Mapped[bool] = mapped_column(default=False)
    # The sampling backend registered under this name, and its options (validated by it).
    backend: Mapped[str] = mapped_column(String(50), default="transformers")
    backend_options: Mapped[dict[str, Any]] = mapped_column(default=dict)
    notes: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    family: Mapped[Family] = relationship(back_populates="models")


class Task(Base):
    """A random-generation task (closed: a fixed option list; open: options as observed)."""

    __tablename__ = "tasks"
    __table_args__ = (CheckConstraint(sql_in("kind", TASK_KINDS), name="kind_known"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(10))
    # The closed option list in canonical order (empty for open tasks).
    options: Mapped[list[Any]] = mapped_column(default=list)
    normalizer: Mapped[str] = mapped_column(String(100))
    normalizer_version: Mapped[str] = mapped_column(String(50))
    description: Mapped[str | None] = mapped_column(Text)
    # The whole task definition as read from its file (aliases, normalizer parameters...).
    spec: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    prompts: Mapped[list[Prompt]] = relationship(back_populates="task", order_by="Prompt.position")


class Prompt(Base):
    """A prompt variant of a task. ``position`` is the stable prompt id used by the metrics."""

    __tablename__ = "prompts"
    __table_args__ = (
        UniqueConstraint("task_id", "key"),
        UniqueConstraint("task_id", "position"),
        CheckConstraint("position >= 0", name="position_nonnegative"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"))
    key: Mapped[str] = mapped_column(String(200))
    position: Mapped[int] = mapped_column(Integer)
    template: Mapped[str | None] = mapped_column(Text)
    text_hash: Mapped[str | None] = mapped_column(String(64))

    task: Mapped[Task] = relationship(back_populates="prompts")


class Run(Base):
    """One work unit: (model, task, prompt, sampling parameters, N, seed, mode) and its result.

    ``unit_key`` is a hash of everything that defines the unit, so storing the same unit twice
    is impossible; imported counts use a key of (model, task, prompt, "import").
    """

    __tablename__ = "runs"
    __table_args__ = (
        CheckConstraint(sql_in("mode", RUN_MODES), name="mode_known"),
        CheckConstraint(sql_in("status", RUN_STATUSES), name="status_known"),
        CheckConstraint("n_samples IS NULL OR n_samples > 0", name="n_samples_positive"),
        CheckConstraint("n_invalid >= 0", name="n_invalid_nonnegative"),
        CheckConstraint("attempts >= 0", name="attempts_nonnegative"),
        *(
            CheckConstraint(f"{column} IS NULL OR {column} >= 0", name=f"{column}_nonnegative")
            for column in INVALID_REASON_COLUMNS
        ),
        CheckConstraint(
            "covered_mass IS NULL OR (covered_mass >= 0 AND covered_mass <= 1)",
            name="covered_mass_probability",
        ),
        Index(None, "model_id", "task_id", "prompt_id"),
        Index(None, "status", "model_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    unit_key: Mapped[str] = mapped_column(String(64), unique=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"), index=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id"))
    mode: Mapped[str] = mapped_column(String(10), default="sampled")
    # "ingest" for units sampled by catalog ingest, "import" for counts imported from a file.
    origin: Mapped[str] = mapped_column(String(20), default="ingest")
    status: Mapped[str] = mapped_column(String(10), default="pending")

    # Sampling parameters (NULL where unknown, e.g. imported counts).
    n_samples: Mapped[int | None] = mapped_column(Integer)
    seed: Mapped[int | None] = mapped_column(BigInteger)
    temperature: Mapped[float | None] = mapped_column(Float)
    top_p: Mapped[float | None] = mapped_column(Float)
    top_k: Mapped[int | None] = mapped_column(Integer)
    max_new_tokens: Mapped[int | None] = mapped_column(Integer)
    sampling: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # What changes the answer distribution (catalog.conditions): runs of one condition are
    # pooled, runs of different conditions never are.
    condition: Mapped[dict[str, Any]] = mapped_column(default=dict)
    condition_key: Mapped[str] = mapped_column(String(16), index=True, default="")
    # The task's options or normalizer changed after this run was normalized.
    stale: Mapped[bool] = mapped_column(default=False)

    # Results.
    n_invalid: Mapped[int] = mapped_column(Integer, default=0)
    # n_invalid by reason (catalog.enums.INVALID_REASONS); NULL where the reasons are not
    # known (imported counts, runs normalized before normalizers gave reasons).
    n_no_answer: Mapped[int | None] = mapped_column(Integer)
    n_ambiguous: Mapped[int | None] = mapped_column(Integer)
    n_off_category: Mapped[int | None] = mapped_column(Integer)
    n_out_of_range: Mapped[int | None] = mapped_column(Integer)
    # Sampled runs of the tree sampler: per generated position, the count-weighted sum of
    # next-token entropies (bits) and the tokens drawn (docs/metrics.md, section 13).
    token_entropy: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    covered_mass: Mapped[float | None] = mapped_column(Float)

    # Work-queue bookkeeping.
    claimed_by: Mapped[str | None] = mapped_column(String(200))
    # A fresh token per claim: the final write must present it (fencing a lost lease).
    claim_token: Mapped[str | None] = mapped_column(String(32))
    heartbeat_at: Mapped[datetime | None] = mapped_column()
    lease_expires_at: Mapped[datetime | None] = mapped_column()
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()
    wall_seconds: Mapped[float | None] = mapped_column(Float)

    # Provenance.
    model_revision: Mapped[str | None] = mapped_column(String(200))
    dtype: Mapped[str | None] = mapped_column(String(30))
    device: Mapped[str | None] = mapped_column(String(100))
    chat_template_hash: Mapped[str | None] = mapped_column(String(64))
    rendered_prompt: Mapped[str | None] = mapped_column(Text)
    rendered_prompt_hash: Mapped[str | None] = mapped_column(String(64))
    normalizer_version: Mapped[str | None] = mapped_column(String(50))
    catalog_version: Mapped[str | None] = mapped_column(String(50))
    git_commit: Mapped[str | None] = mapped_column(String(64))
    host: Mapped[str | None] = mapped_column(String(200))
    library_versions: Mapped[dict[str, Any]] = mapped_column(default=dict)
    source_file: Mapped[str | None] = mapped_column(String(1000))

    model: Mapped[Model] = relationship()
    task: Mapped[Task] = relationship()
    prompt: Mapped[Prompt] = relationship()


# What a completion text cannot hold on both databases, and what is stored instead:
# PostgreSQL text cannot hold NUL (a byte-level tokenizer can decode one), so NUL becomes
# U+FFFD, the replacement character. The bulk imports apply the same map to whole columns.
UNSTORABLE_CHARACTERS = {"\x00": "\ufffd"}


def storable_text(text: str) -> str:
    """A completion text as both databases can store it (:data:`UNSTORABLE_CHARACTERS`).
    Normalizers see the text as the model wrote it."""
    for character, stored in UNSTORABLE_CHARACTERS.items():
        text = text.replace(character, stored)
    return text


class Completion(Base):
    """A distinct completion text of a sampled run and how many samples produced it."""

    __tablename__ = "completions"
    __table_args__ = (
        CheckConstraint("count > 0", name="count_positive"),
        CheckConstraint(
            f"invalid_reason IS NULL OR {sql_in('invalid_reason', INVALID_REASONS)}",
            name="invalid_reason_known",
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    text: Mapped[str] = mapped_column(Text)
    count: Mapped[int] = mapped_column(BigInteger)
    # The normalized option, NULL when the text could not be normalized (invalid).
    option: Mapped[str | None] = mapped_column(String(500))
    # Why the text is invalid (catalog.enums.INVALID_REASONS); NULL for a valid text.
    invalid_reason: Mapped[str | None] = mapped_column(String(20))


class OptionCount(Base):
    """Normalized sample count of one option in one sampled run (invalid answers excluded)."""

    __tablename__ = "option_counts"
    __table_args__ = (CheckConstraint("count >= 0", name="count_nonnegative"),)

    run_id: Mapped[int] = mapped_column(
        ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True
    )
    option: Mapped[str] = mapped_column(String(500), primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger)


class ExactProb(Base):
    """Exact probability of one option in one exact-mode run, renormalized over the options."""

    __tablename__ = "exact_probs"
    __table_args__ = (
        CheckConstraint("probability >= 0 AND probability <= 1", name="probability_in_unit"),
    )

    run_id: Mapped[int] = mapped_column(
        ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True
    )
    option: Mapped[str] = mapped_column(String(500), primary_key=True)
    probability: Mapped[float] = mapped_column(Float)
