"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('families',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('description', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_families')),
    sa.UniqueConstraint('name', name=op.f('uq_families_name'))
    )
    op.create_table('tasks',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('kind', sa.String(length=10), nullable=False),
    sa.Column('options', sa.JSON(), nullable=False),
    sa.Column('normalizer', sa.String(length=100), nullable=False),
    sa.Column('normalizer_version', sa.String(length=50), nullable=False),
    sa.Column('description', sa.Text(), nullable=True),
    sa.Column('spec', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("kind IN ('closed', 'open')", name=op.f('ck_tasks_kind_known')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tasks')),
    sa.UniqueConstraint('name', name=op.f('uq_tasks_name'))
    )
    op.create_table('models',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('family_id', sa.Integer(), nullable=False),
    sa.Column('stage', sa.String(length=100), nullable=False),
    sa.Column('stage_order', sa.Integer(), nullable=False),
    sa.Column('source', sa.String(length=1000), nullable=True),
    sa.Column('revision', sa.String(length=200), nullable=True),
    sa.Column('prompt_format', sa.String(length=10), nullable=False),
    sa.Column('gguf_file', sa.String(length=500), nullable=True),
    sa.Column('trust_remote_code', sa.Boolean(), nullable=False),
    sa.Column('notes', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("prompt_format IN ('chat', 'plain')", name=op.f('ck_models_prompt_format_known')),
    sa.CheckConstraint('stage_order >= 0', name=op.f('ck_models_stage_order_nonnegative')),
    sa.ForeignKeyConstraint(['family_id'], ['families.id'], name=op.f('fk_models_family_id_families')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_models')),
    sa.UniqueConstraint('family_id', 'stage', name=op.f('uq_models_family_id_stage')),
    sa.UniqueConstraint('name', name=op.f('uq_models_name'))
    )
    with op.batch_alter_table('models', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_models_family_id'), ['family_id'], unique=False)

    op.create_table('prompts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('task_id', sa.Integer(), nullable=False),
    sa.Column('key', sa.String(length=200), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('template', sa.Text(), nullable=True),
    sa.Column('text_hash', sa.String(length=64), nullable=True),
    sa.CheckConstraint('position >= 0', name=op.f('ck_prompts_position_nonnegative')),
    sa.ForeignKeyConstraint(['task_id'], ['tasks.id'], name=op.f('fk_prompts_task_id_tasks')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_prompts')),
    sa.UniqueConstraint('task_id', 'key', name=op.f('uq_prompts_task_id_key')),
    sa.UniqueConstraint('task_id', 'position', name=op.f('uq_prompts_task_id_position'))
    )
    op.create_table('runs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('unit_key', sa.String(length=64), nullable=False),
    sa.Column('model_id', sa.Integer(), nullable=False),
    sa.Column('task_id', sa.Integer(), nullable=False),
    sa.Column('prompt_id', sa.Integer(), nullable=False),
    sa.Column('mode', sa.String(length=10), nullable=False),
    sa.Column('origin', sa.String(length=20), nullable=False),
    sa.Column('status', sa.String(length=10), nullable=False),
    sa.Column('n_samples', sa.Integer(), nullable=True),
    sa.Column('seed', sa.BigInteger(), nullable=True),
    sa.Column('temperature', sa.Float(), nullable=True),
    sa.Column('top_p', sa.Float(), nullable=True),
    sa.Column('top_k', sa.Integer(), nullable=True),
    sa.Column('max_new_tokens', sa.Integer(), nullable=True),
    sa.Column('sampling', sa.JSON(), nullable=False),
    sa.Column('n_invalid', sa.Integer(), nullable=False),
    sa.Column('covered_mass', sa.Float(), nullable=True),
    sa.Column('claimed_by', sa.String(length=200), nullable=True),
    sa.Column('lease_expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('wall_seconds', sa.Float(), nullable=True),
    sa.Column('model_revision', sa.String(length=200), nullable=True),
    sa.Column('dtype', sa.String(length=30), nullable=True),
    sa.Column('device', sa.String(length=100), nullable=True),
    sa.Column('chat_template_hash', sa.String(length=64), nullable=True),
    sa.Column('rendered_prompt', sa.Text(), nullable=True),
    sa.Column('rendered_prompt_hash', sa.String(length=64), nullable=True),
    sa.Column('normalizer_version', sa.String(length=50), nullable=True),
    sa.Column('catalog_version', sa.String(length=50), nullable=True),
    sa.Column('git_commit', sa.String(length=64), nullable=True),
    sa.Column('host', sa.String(length=200), nullable=True),
    sa.Column('library_versions', sa.JSON(), nullable=False),
    sa.Column('source_file', sa.String(length=1000), nullable=True),
    sa.CheckConstraint("mode IN ('sampled', 'exact')", name=op.f('ck_runs_mode_known')),
    sa.CheckConstraint("status IN ('pending', 'running', 'done', 'failed')", name=op.f('ck_runs_status_known')),
    sa.CheckConstraint('attempts >= 0', name=op.f('ck_runs_attempts_nonnegative')),
    sa.CheckConstraint('covered_mass IS NULL OR (covered_mass >= 0 AND covered_mass <= 1)', name=op.f('ck_runs_covered_mass_probability')),
    sa.CheckConstraint('n_invalid >= 0', name=op.f('ck_runs_n_invalid_nonnegative')),
    sa.CheckConstraint('n_samples IS NULL OR n_samples > 0', name=op.f('ck_runs_n_samples_positive')),
    sa.ForeignKeyConstraint(['model_id'], ['models.id'], name=op.f('fk_runs_model_id_models')),
    sa.ForeignKeyConstraint(['prompt_id'], ['prompts.id'], name=op.f('fk_runs_prompt_id_prompts')),
    sa.ForeignKeyConstraint(['task_id'], ['tasks.id'], name=op.f('fk_runs_task_id_tasks')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_runs')),
    sa.UniqueConstraint('unit_key', name=op.f('uq_runs_unit_key'))
    )
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_runs_model_id_task_id_prompt_id'), ['model_id', 'task_id', 'prompt_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_runs_status_model_id'), ['status', 'model_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_runs_task_id'), ['task_id'], unique=False)

    op.create_table('completions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('count', sa.BigInteger(), nullable=False),
    sa.Column('option', sa.String(length=500), nullable=True),
    sa.CheckConstraint('count > 0', name=op.f('ck_completions_count_positive')),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_completions_run_id_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_completions'))
    )
    with op.batch_alter_table('completions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_completions_run_id'), ['run_id'], unique=False)

    op.create_table('exact_probs',
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('option', sa.String(length=500), nullable=False),
    sa.Column('probability', sa.Float(), nullable=False),
    sa.CheckConstraint('probability >= 0 AND probability <= 1', name=op.f('ck_exact_probs_probability_in_unit')),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_exact_probs_run_id_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_id', 'option', name=op.f('pk_exact_probs'))
    )
    op.create_table('option_counts',
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('option', sa.String(length=500), nullable=False),
    sa.Column('count', sa.BigInteger(), nullable=False),
    sa.CheckConstraint('count >= 0', name=op.f('ck_option_counts_count_nonnegative')),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_option_counts_run_id_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_id', 'option', name=op.f('pk_option_counts'))
    )


def downgrade() -> None:
    op.drop_table('option_counts')
    op.drop_table('exact_probs')
    with op.batch_alter_table('completions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_completions_run_id'))

    op.drop_table('completions')
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_runs_task_id'))
        batch_op.drop_index(batch_op.f('ix_runs_status_model_id'))
        batch_op.drop_index(batch_op.f('ix_runs_model_id_task_id_prompt_id'))

    op.drop_table('runs')
    op.drop_table('prompts')
    with op.batch_alter_table('models', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_models_family_id'))

    op.drop_table('models')
    op.drop_table('tasks')
    op.drop_table('families')
