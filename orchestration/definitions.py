"""The one place that builds the code location's Definitions."""

import dagster as dg

from assets import documents
from orchestration.jobs import refresh_policies
from orchestration.resources import RagfreshResource

defs = dg.Definitions(
    assets=[documents.policy_documents],
    jobs=[refresh_policies],
    resources={"ragfresh": RagfreshResource()},
)
