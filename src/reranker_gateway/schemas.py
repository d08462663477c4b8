"""Request and response bodies of the three rerank schemas (Cohere v1 / Jina, Cohere v2, TEI).

Requests are parsed strictly (no ``"5"`` for ``5``) and unknown fields are ignored, so newer SDKs
that add optional fields keep working. Responses are documented here for the OpenAPI document;
the handlers build them as plain dicts.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

_REQUEST = ConfigDict(strict=True, extra="ignore")

RAW_SCORES_HELP = "Extension: return raw logits instead of sigmoid(logit) in relevance_score."


class DocumentObject(BaseModel):
    """A document as an object: ``text`` is ranked; every other field comes back unchanged."""

    model_config = ConfigDict(strict=True, extra="allow")
    text: str


DocumentInput = str | DocumentObject


class RerankRequest(BaseModel):
    """``POST /v1/rerank``: the Cohere v1 and Jina rerank request."""

    model_config = _REQUEST
    model: str | None = Field(None, description="The served model name; omitted or null: the one model served.")
    query: str
    documents: list[DocumentInput] = Field(
        min_length=1, description="Strings, or objects with a `text` field (other fields are echoed back)."
    )
    top_n: int | None = Field(None, ge=1, description="Return the best N; omitted or null: all, best first.")
    return_documents: bool = Field(False, description="Include each result's document.")
    rank_fields: list[str] | None = Field(None, description='Only `["text"]` (the default) is supported.')
    max_chunks_per_doc: int | None = Field(
        None, ge=1, description="Accepted when the server truncates (one chunk per document); see the docs."
    )
    raw_scores: bool = Field(False, description=RAW_SCORES_HELP)


class RerankRequestV2(BaseModel):
    """``POST /v2/rerank``: the Cohere v2 rerank request."""

    model_config = _REQUEST
    model: str | None = Field(None, description="The served model name; omitted or null: the one model served.")
    query: str
    documents: list[DocumentInput] = Field(min_length=1, description="Strings (objects with `text` also accepted).")
    top_n: int | None = Field(None, ge=1, description="Return the best N; omitted or null: all, best first.")
    max_tokens_per_doc: int | None = Field(
        None,
        ge=1,
        description="Honoured when the server keeps at most this many tokens per document anyway; "
        "a smaller value is rejected with 422 (the gateway has no tokenizer). See the docs.",
    )
    priority: int | None = Field(None, description="Accepted and ignored: requests are served in arrival order.")
    return_documents: bool = Field(False, description="Extension: include each result's document.")
    raw_scores: bool = Field(False, description=RAW_SCORES_HELP)


class TEIRerankRequest(BaseModel):
    """``POST /rerank``: the Hugging Face text-embeddings-inference rerank request."""

    model_config = _REQUEST
    query: str
    texts: list[str] = Field(min_length=1)
    raw_scores: bool = Field(False, description="Raw logits instead of sigmoid(logit).")
    return_text: bool = Field(False, description="Include each result's text.")
    truncate: bool | None = Field(
        None, description="Accepted; the server always truncates (or windows) long pairs, never rejects them."
    )
    truncation_direction: Literal["Right", "right"] = Field(
        "Right", description="Only Right: pairs keep the start of each document."
    )


class ResultDocument(BaseModel):
    model_config = ConfigDict(extra="allow")
    text: str


class RerankResult(BaseModel):
    index: int = Field(description="Position of the document in the request.")
    relevance_score: float = Field(description="sigmoid(logit) in [0, 1], or the raw logit with raw_scores.")
    document: ResultDocument | None = Field(None, description="With return_documents.")


class ApiVersion(BaseModel):
    version: str


class BilledUnits(BaseModel):
    search_units: int = Field(description="One per query and started 100 documents, as Cohere counts them.")


class Meta(BaseModel):
    api_version: ApiVersion
    billed_units: BilledUnits


class Usage(BaseModel):
    documents: int = Field(description="Documents scored (token counts are not known to the gateway).")
    search_units: int


class RerankResponse(BaseModel):
    """Results best first; ties in score are broken by the lower index."""

    id: str
    model: str
    results: list[RerankResult]
    usage: Usage
    meta: Meta


class TEIRank(BaseModel):
    index: int
    score: float = Field(description="sigmoid(logit), or the raw logit with raw_scores.")
    text: str | None = Field(None, description="With return_text.")


class ErrorBody(BaseModel):
    """Errors of the Cohere/Jina endpoints. Validation errors add ``detail`` with each field's location."""

    message: str
    detail: list[dict[str, Any]] | None = None


class TEIErrorBody(BaseModel):
    """Errors of ``POST /rerank``, as TEI writes them."""

    error: str
    error_type: str


class Health(BaseModel):
    status: Literal["ok", "unhealthy"]
    canary_ms: float
    error: str | None = None


class ServerInfo(BaseModel):
    model: str
    max_documents_per_request: int = Field(description="Documents one HTTP request may carry.")
    max_body_bytes: int
    triton_max_documents: int | None = Field(description="Documents per Triton request; larger lists are split.")
    max_length: int | None = Field(description="Tokens per (query, document) pair on the server.")
    overflow: str | None = Field(description="truncate or window: what the server does with long documents.")
