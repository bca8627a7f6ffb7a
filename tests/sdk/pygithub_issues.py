"""Drives the sidecar with the real PyGithub, unchanged: only `base_url` points at the proxy's
/github route, and no token (the proxy injects it). Run by tests/sdk_pygithub.rs.

PyGithub follows URLs taken from response bodies (`repo.url` for issues, `Link` for pages): they
stay behind the proxy only because it rewrites them. The script prints `{"step": "paused", ...}`
after the first page of issues and waits for a line on stdin (the test revokes the token
meanwhile), then a final `{"step": "done", ...}` line. Any error exits non-zero. Never prints a
token: it holds none.
"""

import json
import os
import sys
from importlib.metadata import version

from github import Github

proxy = os.environ.get("PROXY_URL")
if not proxy:
    print("PROXY_URL is not set", file=sys.stderr)
    sys.exit(2)

g = Github(base_url=f"{proxy}/github", user_agent="orp-pygithub-test", retry=None, timeout=20)

repo = g.get_repo("octo/hello")
issues = iter(repo.get_issues())
first_page = [next(issues), next(issues)]
print(
    json.dumps(
        {
            "step": "paused",
            "pygithub": version("PyGithub"),
            "repo_url": repo.url,
            "first": [i.title for i in first_page],
        }
    ),
    flush=True,
)
if sys.stdin.readline().strip() != "go":
    print("no go line on stdin", file=sys.stderr)
    sys.exit(3)

rest = list(issues)
created = repo.create_issue(title="made through the proxy")
print(
    json.dumps(
        {
            "step": "done",
            "full_name": repo.full_name,
            "repo_url": repo.url,
            "titles": [i.title for i in first_page + rest],
            "issue_urls": [i.url for i in first_page + rest],
            "created": {"number": created.number, "title": created.title, "url": created.url},
        }
    ),
    flush=True,
)
