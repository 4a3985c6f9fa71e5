"""What a type checker sees of the SDK (it ships ``py.typed``): mypy --strict on an agent's code."""
import textwrap

from mypy import api

AGENT = textwrap.dedent('''
    from hitl_sdk import HitlClient, WithUsage, require_approval

    client = HitlClient("http://hitl.invalid", "key")

    @require_approval(client, "project", action="deploy")
    def deploy(service: str, replicas: int = 1) -> WithUsage[str]:
        return WithUsage(f"{service} x{replicas}", tokens_used=1, actual_cost="0.1000")

    @require_approval(client, "project")
    def plain(n: int) -> dict[str, int]:
        return {"n": n}

    @require_approval(client, "project")
    async def deploy_async(service: str) -> WithUsage[int]:
        return WithUsage(3, tokens_used=1)

    reveal_type(deploy("api"))
    reveal_type(plain(1))
    reveal_type(deploy_async("api"))
    reveal_type(deploy)
''')


def test_a_gated_function_returning_with_usage_gives_its_caller_the_value_type(tmp_path):
    """``@require_approval`` was typed ``Callable[[F], F]``: a function returning ``WithUsage`` was
    seen to give its caller the ``WithUsage``, where the caller gets its ``value``."""
    agent = tmp_path / "agent.py"
    agent.write_text(AGENT)
    out, err, status = api.run(["--strict", "--no-incremental", "--cache-dir", str(tmp_path / "cache"),
                                str(agent)])
    revealed = [line.split("Revealed type is ", 1)[1].strip('"') for line in out.splitlines()
                if "Revealed type is" in line]
    assert revealed == ["str", "dict[str, int]", "typing.Coroutine[Any, Any, int]",
                        "def (service: str, replicas: int =) -> str"], (out, err)
    errors = [line for line in out.splitlines() if ": error:" in line]
    assert errors == [line for line in errors if "unused-coroutine" in line], out  # deploy_async("api") unawaited
