// Drives the sidecar with the real GitHub SDK (octokit), unchanged: only `baseUrl` points at the
// proxy's /github route. Run by tests/sdk.rs; prints one JSON line per run, exits non-zero on any
// error. Never prints a token: the caller holds none (or a bogus one the proxy must replace).
import { Octokit } from "octokit";

const proxy = process.env.PROXY_URL;
if (!proxy) {
  console.error("PROXY_URL is not set");
  process.exit(2);
}

async function run(label, auth) {
  const options = { baseUrl: `${proxy}/github`, userAgent: "orp-sdk-test" };
  if (auth !== undefined) options.auth = auth;
  const octokit = new Octokit(options);
  const user = await octokit.rest.users.getAuthenticated();
  let pages = 0;
  const urls = [];
  const repos = await octokit.paginate(
    octokit.rest.repos.listForAuthenticatedUser,
    { per_page: 2 },
    (response) => {
      pages += 1;
      urls.push(response.url);
      return response.data;
    },
  );
  return {
    run: label,
    user_status: user.status,
    repos: repos.map((r) => r.name),
    pages,
    urls,
  };
}

try {
  for (const [label, auth] of [
    ["no-auth", undefined],
    ["caller-token", "caller-token"],
  ]) {
    console.log(JSON.stringify(await run(label, auth)));
  }
} catch (e) {
  console.error(`octokit failed: ${e?.status ?? ""} ${e?.message ?? e}`);
  process.exit(1);
}
