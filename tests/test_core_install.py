"""`pip install -e .` without extras (no FastAPI, gradio, Celery) still gives a working `huabu` for still images:
the CLI registers every command without importing an optional web framework."""

import subprocess
import sys
import textwrap

OPTIONAL = ("fastapi", "uvicorn", "starlette", "gradio", "celery", "redis", "playwright", "schemathesis")


def test_cli_builds_and_generate_parses_without_the_optional_extras():
    script = textwrap.dedent(f"""
        import importlib.abc, sys

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {OPTIONAL!r}:
                    raise ModuleNotFoundError(f"No module named {{name!r}}")

        sys.meta_path.insert(0, Block())
        from huabu.cli.main import build_parser
        import huabu.server

        args = build_parser().parse_args(["generate", "a red apple", "--seed", "3"])
        print(args.command, args.seed, huabu.server.ServerConfig.__name__)
        print(sorted(name for name in sys.modules if name.split(".")[0] in {OPTIONAL!r}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == ["generate 3 ServerConfig", "[]"]
