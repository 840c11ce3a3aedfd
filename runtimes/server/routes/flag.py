"""FlagEmbedding's own calls over HTTP: /v1/flag/{method}, for what no peer serves (bge-m3's three heads and
scores, layer-wise cutoffs, the LLM rerankers' prompt, in-context examples)."""
from __future__ import annotations

from fastapi import Request

from runtimes.server.http import HTTPError, Http, plain
from runtimes.server.infer import Inference
from runtimes.server.schemas import FlagCallRequest


def register(http: Http, infer: Inference) -> None:
    @http.route("/v1/flag/{method}")
    async def flag_call(request: Request):
        """FlagEmbedding's API over HTTP: the body holds the call's keywords (for example
        {"sentences": [...], "return_sparse": true} for BGEM3FlagModel.encode, or {"sentence_pairs": [[q, p]],
        "cutoff_layers": [8]}), ``options`` per-call constructor options; the answer is {"result": ...} with
        numpy arrays as lists. Inputs are truncated to max_length as the Python call truncates them."""
        method = request.path_params["method"]
        body = await http.body(request, FlagCallRequest)
        served = http.model(request, body.model)
        if method not in served.calls:
            raise HTTPError(404, f"model '{served.name}' ({served.api}) has no call '{method}' here (its calls: "
                                 f"{', '.join(sorted(served.calls))})", "not_found")
        kwargs = dict(body.model_extra or {})
        first = served.calls[method].inputs
        inputs = kwargs.get(first)
        if inputs is None:
            raise HTTPError(422, f"{method} needs '{first}'", "validation")
        one_pair = first == "sentence_pairs" and isinstance(inputs, list) and inputs and isinstance(inputs[0], str)
        n = len(inputs) if isinstance(inputs, list) and not one_pair else 1
        infer.count(request, n)
        result, timing = await infer.call(request, served, method, kwargs, options=body.options, n=n)
        return http.ok(request, {"result": plain(result)}, timing)
