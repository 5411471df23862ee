"""genret.tokenizers: the SID-fitting stage.

The RQ-KMeans semantic-ID tokenizer, the SID <-> item index, the codebook report, and the step
from a data set to SIDs (item vectors, SIDConfig, fit_semantic_ids with its fitted-tokenizer cache).
Imports only genret.data, genret.io and itself.
"""

from genret.tokenizers.artifacts import ArtifactError, ArtifactNotFoundError
from genret.tokenizers.report import codebook_report, format_report
from genret.tokenizers.rq_kmeans import NotFittedError, RQKMeans
from genret.tokenizers.semantic_ids import SIDConfig, fit_semantic_ids
from genret.tokenizers.sid_index import SIDIndex
from genret.tokenizers.unique_codes import spread_last_level

__all__ = [
    "RQKMeans",
    "SIDIndex",
    "spread_last_level",
    "codebook_report",
    "format_report",
    "NotFittedError",
    "ArtifactError",
    "ArtifactNotFoundError",
    "SIDConfig",
    "fit_semantic_ids",
]
