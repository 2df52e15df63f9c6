"""Live parameters: the record of every change to the fleet's live strategy and risk parameters.

* param_changes: append-only, one row per setting a change touched; a change is one `version`
  (rising, one per `python -m worker params set|reset`), its rows share it. `old_value` and
  `new_value` are the effective values as text (the environment's when none was set live);
  `live` false means the change returned the setting to the environment's value (reset).
  The latest row per key says what is live now; Redis (`{prefix}:params`) publishes that.

Revision ID: 0005_params
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_params"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "param_changes",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("old_value", sa.Text(), nullable=False),
        sa.Column("new_value", sa.Text(), nullable=False),
        sa.Column("live", sa.Boolean(), nullable=False),
        sa.Column("changed_by", sa.Text(), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("forced", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_param_changes"),
        sa.UniqueConstraint("version", "key", name="uq_param_changes_version_key"),
        sa.CheckConstraint("version > 0", name=op.f("ck_param_changes_version_positive")),
    )
    op.create_index("ix_param_changes_key", "param_changes", ["key"])


def downgrade() -> None:
    op.drop_table("param_changes")
