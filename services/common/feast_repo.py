"""Prepare, apply and open the Feast repo with settings from the environment.

The definitions live in feature_repo/. A runnable copy (definitions + a generated
feature_store.yaml + its own registry and offline parquet under data/) is prepared in
`FeastSettings.work_dir`, so the local stack, CI runs and tests never share state by accident.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from services.common import features, offline_store
from services.common.settings import FeastSettings, RedisSettings

if TYPE_CHECKING:
    from feast import FeatureStore

log = logging.getLogger(__name__)

FEATURE_VIEW = "card_state"
PUSH_SOURCE = "card_state_push"
#: The feature service of the current model generation (FEATURE_NAMES); model metadata records it.
FEATURE_SERVICE = "fraud_model_v2"
ENTITY_KEY = "card_id"
TIMESTAMP = "event_timestamp"

TERMINAL_FEATURE_VIEW = "terminal_state"
TERMINAL_PUSH_SOURCE = "terminal_state_push"
TERMINAL_ENTITY_KEY = "terminal_id"


def feature_refs() -> list[str]:
    """The card_state view's columns."""
    return [f"{FEATURE_VIEW}:{column}" for column in features.STATE_COLUMNS]


def terminal_feature_refs() -> list[str]:
    """The terminal_state view's columns."""
    return [f"{TERMINAL_FEATURE_VIEW}:{column}" for column in features.TERMINAL_STATE_COLUMNS]


def model_feature_refs() -> list[str]:
    """Everything FEATURE_SERVICE reads: both views (their column names never clash)."""
    return [*feature_refs(), *terminal_feature_refs()]


def render_config(feast: FeastSettings, redis: RedisSettings, work_dir: Path) -> str:
    # Quoted: the connection string may carry a password with YAML-significant characters.
    conn = redis.feast_connection_string().replace('"', '\\"')
    return (
        f"project: {feast.project}\n"
        f"registry: {work_dir / 'data' / 'registry.db'}\n"
        "provider: local\n"
        "online_store:\n"
        "  type: redis\n"
        f'  connection_string: "{conn}"\n'
        "offline_store:\n"
        "  type: file\n"
        "entity_key_serialization_version: 3\n"
    )


def prepare(feast: FeastSettings, redis: RedisSettings) -> Path:
    """Copy the definitions into the work dir and write its feature_store.yaml. Idempotent."""
    work_dir = feast.work_dir.resolve()
    (work_dir / "data").mkdir(parents=True, exist_ok=True)
    for source in sorted(feast.definitions_dir.glob("*.py")):
        shutil.copy2(source, work_dir / source.name)
    shutil.copy2(feast.definitions_dir / ".feastignore", work_dir / ".feastignore")
    (work_dir / "feature_store.yaml").write_text(render_config(feast, redis, work_dir))
    offline_store.init(work_dir)
    return work_dir


def apply(repo_dir: Path) -> None:
    """`feast apply` on a prepared repo (the real CLI, so what runs here runs by hand too)."""
    feast_cli = Path(sys.executable).parent / "feast"
    cmd = [str(feast_cli) if feast_cli.exists() else "feast", "-c", str(repo_dir), "apply"]
    log.info("feast apply in %s", repo_dir)
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"feast apply failed:\n{result.stdout}\n{result.stderr}")


def prepare_and_apply(feast: FeastSettings, redis: RedisSettings) -> Path:
    repo_dir = prepare(feast, redis)
    apply(repo_dir)
    return repo_dir


def open_store(repo_dir: Path) -> FeatureStore:
    from feast import FeatureStore

    return FeatureStore(repo_path=str(repo_dir))
