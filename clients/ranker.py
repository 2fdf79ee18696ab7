"""A ranker: a user's vector (cached from ``user-vectors``, or query-aware from a worker) × candidates.

The CTR/L2R heads only make sense on vectors of the model they were trained
with, so a vector of another ``model_version`` is refused, not scored.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from clients.client import VectorClient
from clients.vector_cache import VectorCache
from core.settings import Settings
from encoder.checkpoint import load_checkpoint
from encoder.scoring import Candidate, score_split

Ranked = tuple[str, float, float]  # (item_id, ctr probability, l2r score)


class ModelVersionMismatch(ValueError):
    """The user's vector was produced by another model than the ranker's checkpoint."""


class Ranker:
    def __init__(self, checkpoint_dir: str | os.PathLike[str], cache: VectorCache | None, settings: Settings) -> None:
        ckpt = load_checkpoint(checkpoint_dir)
        self.model = ckpt.model
        self.model_version = ckpt.model_version
        self.cache = cache
        self.settings = settings
        self._client: VectorClient | None = None

    @property
    def client(self) -> VectorClient:
        """The HTTP client for query-aware vectors (made on first use; keeps its connections)."""
        if self._client is None:
            self._client = VectorClient.from_settings(self.settings)
        return self._client

    def user_vector(self, user_id: str, query: str | None = None) -> tuple[np.ndarray, str]:
        """(vector, its model_version): query-aware from a worker, else the cached latest one
        (without a cache: the latest one from a worker)."""
        if query or self.cache is None:
            got = self.client.get(user_id, query=query)
            if got.vector is None:
                raise LookupError(f"no vector for user {user_id!r} from the workers: {got.status} {got.reason or ''}")
            return got.vector, str(got.model_version)
        hit = self.cache.get(user_id)
        if hit is None:
            raise LookupError(f"no vector for user {user_id!r} in {self.settings.kafka.vectors_topic}")
        return hit[0].vector, hit[0].model_version

    def score(
        self,
        user_id: str,
        candidates: Sequence[Candidate],
        query: str | None = None,
        ranking_features: np.ndarray | None = None,
    ) -> list[Ranked]:
        """Candidates sorted by CTR probability, highest first."""
        if not candidates:
            return []
        vector, version = self.user_vector(user_id, query)
        if version != self.model_version:
            raise ModelVersionMismatch(
                f"vector of {user_id!r} is from model {version}, the ranker's checkpoint is {self.model_version}; "
                "load the matching checkpoint (scoring across versions is meaningless)"
            )
        ctr, l2r = score_split(self.model, vector, candidates, ranking_features)
        ranked = [(str(c["item_id"]), float(p), float(s)) for c, p, s in zip(candidates, ctr, l2r, strict=True)]
        return sorted(ranked, key=lambda row: -row[1])
