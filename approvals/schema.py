"""OpenAPI for the long poll, which is a Channels consumer that drf-spectacular cannot see."""


def add_wait_endpoint(result, generator, request, public):
    paths = result.setdefault("paths", {})
    paths["/api/v1/agent-approvals/{approval_id}/wait"] = _wait("agent_approvals_wait", "AgentCallApprovalOutput")
    paths["/api/v1/response-approvals/{approval_id}/wait"] = _wait("response_approvals_wait",
                                                                   "ResponseApprovalOutput")
    # named as the other /hitl paths name it (the schema said approval_id)
    paths["/api/v1/hitl/{request_id}/wait"] = _wait("hitl_wait", "HitlRequestOutput", parameter="request_id")
    return result


def _wait(operation_id: str, schema: str, parameter: str = "approval_id") -> dict:
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    return {
        "get": {
            "operationId": operation_id,
            "summary": "Long-poll an approval until it is decided",
            "description": "Returns as soon as the status is no longer `pending` (approved, rejected, timed_out "
                           "or cancelled), or after `timeout` seconds with the pending approval. An approval "
                           "whose deadline passed is timed out here even if beat is late.",
            "tags": ["api"],
            "parameters": [
                {"name": parameter, "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}},
                {"name": "timeout", "in": "query", "required": False,
                 "schema": {"type": "number", "minimum": 0, "default": 30},
                 "description": "seconds to wait at most, written as digits with an optional fraction (30, 2.5; not "
                                "1e1: 400); values above 60 wait 60"},
            ],
            "security": [{"ApiKey": []}, {"cookieAuth": []}],
            "responses": {
                "200": {"description": "The approval", "content": {
                    "application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}},
                "400": {"description": "Bad timeout", "content": error},
                "401": {"description": "No or bad credentials", "content": error},
                "404": {"description": "No such approval, or not visible", "content": error},
                "503": {"description": "The database is busy: retry after Retry-After seconds", "content": error},
            },
        }
    }

