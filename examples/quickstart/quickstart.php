<?php
/**
 * keygate quickstart in PHP (the README's curl quickstart, step by step).
 *
 * Needs a running keygate and PHP >= 8.0 with the curl extension (Debian: php-cli php-curl):
 *
 *     KEYGATE_ADMIN_TOKEN=kgadm_... php examples/quickstart/quickstart.php
 *
 * KEYGATE_URL defaults to http://127.0.0.1:8080. Each step checks the status and error code
 * it expects and the script exits 1 at the first mismatch. Full keys are never printed:
 * only their display prefix (`kg_live_3f9c1a2b`).
 */

declare(strict_types=1);

if (!function_exists('curl_init')) {
    fwrite(STDERR, "quickstart.php needs the curl extension (Debian: apt-get install php-curl)\n");
    exit(1);
}

$BASE = rtrim(getenv('KEYGATE_URL') ?: 'http://127.0.0.1:8080', '/');
$TOKEN = getenv('KEYGATE_ADMIN_TOKEN') ?: '';
const TIMEOUT = 10;

/** Anything key- or token-shaped is cut down before it is printed. */
function redact(string $text): string
{
    $text = preg_replace('/\b([a-z][a-z0-9]*_(?:(?:live|test)_)?[0-9a-f]{8})[0-9a-f]{56}\b/', '$1…', $text);
    return preg_replace('/kgadm_[0-9A-Za-z]+/', 'kgadm_…', $text);
}

function fail(string $message): never
{
    fwrite(STDERR, 'FAIL: ' . redact($message) . "\n");
    exit(1);
}

function step(string $message): void
{
    echo '  ok  ' . redact($message) . "\n";
}

/** One HTTP answer: status, headers (lower-case names) and raw body. */
final class Answer
{
    public function __construct(
        public int $status,
        public array $headers,
        public string $body,
    ) {
    }

    public function header(string $name): ?string
    {
        return $this->headers[strtolower($name)] ?? null;
    }
}

/**
 * @param array<string, string> $headers
 * @param array<string, string> $query
 */
function call(string $method, string $path, array $headers = [], ?array $json = null, array $query = []): Answer
{
    global $BASE;
    $url = $BASE . $path . ($query ? '?' . http_build_query($query) : '');
    $h = [];
    foreach ($headers as $name => $value) {
        $h[] = "$name: $value";
    }
    $curl = curl_init($url);
    $options = [
        CURLOPT_CUSTOMREQUEST => $method,
        CURLOPT_RETURNTRANSFER => true,
        CURLOPT_TIMEOUT => TIMEOUT,
        CURLOPT_PROXY => '',
        CURLOPT_NOPROXY => '*',
    ];
    if ($json !== null) {
        $options[CURLOPT_POSTFIELDS] = json_encode($json, JSON_THROW_ON_ERROR);
        $h[] = 'Content-Type: application/json';
    }
    $options[CURLOPT_HTTPHEADER] = $h;
    $received = [];
    $options[CURLOPT_HEADERFUNCTION] = function ($curl, string $line) use (&$received): int {
        $parts = explode(':', $line, 2);
        if (count($parts) === 2) {
            $received[strtolower(trim($parts[0]))] = trim($parts[1]);
        }
        return strlen($line);
    };
    curl_setopt_array($curl, $options);
    $body = curl_exec($curl);
    if ($body === false) {
        fail("$method $path: cannot reach keygate at $BASE: " . curl_error($curl));
    }
    $status = curl_getinfo($curl, CURLINFO_RESPONSE_CODE);
    curl_close($curl);
    return new Answer($status, $received, $body);
}

/** A management call with the operator's admin token. */
function admin(string $method, string $path, ?array $body = null): Answer
{
    global $TOKEN;
    return call($method, $path, ['Authorization' => "Bearer $TOKEN"], $body);
}

/** What nginx auth_request / Traefik ForwardAuth ask: may this request go through? */
function forward_auth(string $method, string $uri, array $headers): Answer
{
    return call('GET', '/v1/auth', ['X-Original-Method' => $method, 'X-Original-URI' => $uri] + $headers);
}

/** Checks the status (and the error code of a JSON error); returns the JSON body. */
function expect(string $what, Answer $answer, int $status, ?string $code = null): mixed
{
    $body = null;
    if ($answer->body !== '') {
        try {
            $body = json_decode($answer->body, true, 512, JSON_THROW_ON_ERROR);
        } catch (JsonException) {
            fail("$what: expected JSON, got {$answer->status}: " . substr($answer->body, 0, 200));
        }
    }
    $gotCode = is_array($body) ? ($body['code'] ?? null) : null;
    if ($answer->status !== $status || ($code !== null && $gotCode !== $code)) {
        $wanted = $code !== null ? "$status $code" : (string) $status;
        fail("$what: expected $wanted, got {$answer->status} " . json_encode($body));
    }
    return $body;
}

function bearer(string $key): array
{
    return ['Authorization' => "Bearer $key"];
}

/** A well-formed key (right prefix, valid checksum) that was never issued. */
function unknown_key_like(string $key): string
{
    if (!preg_match('/^(.*_)[0-9a-f]{64}$/', $key, $m)) {
        fail('a created key does not have the documented shape');
    }
    $head = $m[1] . bin2hex(random_bytes(28));
    return $head . sprintf('%08x', crc32($head));
}

if ($TOKEN === '') {
    fail('set KEYGATE_ADMIN_TOKEN to the admin token keygate printed on its first start');
}
echo "keygate quickstart (PHP) against $BASE\n";

expect('GET /healthz', call('GET', '/healthz'), 200);
step('GET /healthz -> 200');

// 1. An account on the pro plan (20 keys).
$account = expect('create account', admin('POST', '/v1/accounts', ['name' => 'Acme Invoicing', 'plan' => 'pro']), 201);
step("POST /v1/accounts -> 201 {$account['id']} plan={$account['plan']}");

// 2. A read-only key. The secret is in this answer only.
$created = expect(
    'create key',
    admin('POST', '/v1/api-keys', ['account_id' => $account['id'], 'name' => 'Zapier Integration', 'scope' => 'read']),
    201,
);
$key = $created['key'];
$keyId = $created['id'];
if (!str_starts_with($key, $created['display_prefix'])) {
    fail('the display prefix is not the start of the key');
}
step("POST /v1/api-keys -> 201 $keyId {$created['display_prefix']}… permissions="
    . json_encode($created['permissions']) . ' (secret shown once: store it now)');

// 3. The API's requests, checked by forward-auth, with each accepted header.
foreach ([
    'Authorization: Bearer' => bearer($key),
    'X-API-Key' => ['X-API-Key' => $key],
    'APIKEY' => ['APIKEY' => $key],
] as $name => $headers) {
    $r = forward_auth('GET', '/api/v1/invoices', $headers);
    expect("GET /api/v1/invoices with $name", $r, 204);
    if ($r->header('X-Keygate-Key-Id') !== $keyId) {
        fail("$name: X-Keygate-Key-Id is {$r->header('X-Keygate-Key-Id')}, not $keyId");
    }
    if ($r->header('X-Keygate-Account-Id') !== $account['id']) {
        fail("$name: X-Keygate-Account-Id is not {$account['id']}");
    }
    step("GET /api/v1/invoices ($name) -> 204 X-Keygate-Environment={$r->header('X-Keygate-Environment')}");
}

// 4. Key info: the key reads its own record (never the secret).
$info = expect('key info', call('GET', '/v1/api-key-info', ['APIKEY' => $key]), 200)['data'];
if ($info['id'] !== $keyId || array_key_exists('key', $info)) {
    fail('key info: unexpected record ' . json_encode($info));
}
step("GET /v1/api-key-info -> 200 {$info['name']} {$info['display_prefix']}");

// 5. 401: no key, a key that was never issued, a mistyped key.
expect('no key', forward_auth('GET', '/api/v1/invoices', []), 401, 'missing_credentials');
step('no key -> 401 missing_credentials');
$body = expect('unknown key', forward_auth('GET', '/api/v1/invoices', bearer(unknown_key_like($key))), 401, 'invalid_key');
if ($body['error'] !== 'Invalid API key') {
    fail("unknown key: error is {$body['error']}");
}
step('unknown key -> 401 invalid_key "Invalid API key"');
$typo = substr($key, 0, -1) . (substr($key, -1) !== '0' ? '0' : '1');
expect('mistyped key', forward_auth('GET', '/api/v1/invoices', bearer($typo)), 401, 'malformed_key');
step('mistyped key (checksum fails) -> 401 malformed_key');

// 6. 403: a read key may not create invoices; an allowlisted key from elsewhere.
expect('read key POST', forward_auth('POST', '/api/v1/invoices', bearer($key)), 403, 'insufficient_permissions');
step('POST /api/v1/invoices with a read key -> 403 insufficient_permissions');
$office = expect('create allowlisted key', admin('POST', '/v1/api-keys', [
    'account_id' => $account['id'],
    'name' => 'Office only',
    'scope' => 'read',
    'ip_allowlist' => ['203.0.113.0/24'],
]), 201);
expect('allowlisted key', forward_auth('GET', '/api/v1/invoices', bearer($office['key'])), 403, 'ip_not_allowed');
step("{$office['display_prefix']}… allowlist 203.0.113.0/24, call from here -> 403 ip_not_allowed");

// 7. 429: two requests a minute, then the third.
$throttled = expect('create rate-limited key', admin('POST', '/v1/api-keys', [
    'account_id' => $account['id'],
    'name' => 'Throttled',
    'scope' => 'read',
    'rate_limit' => ['requests' => 2, 'per_seconds' => 60],
]), 201);
foreach ([1, 2] as $n) {
    expect("rate-limited call $n", forward_auth('GET', '/api/v1/invoices', bearer($throttled['key'])), 204);
}
$r = forward_auth('GET', '/api/v1/invoices', bearer($throttled['key']));
expect('rate-limited call 3', $r, 429, 'rate_limited');
if (!$r->header('Retry-After')) {
    fail('rate-limited call 3: no Retry-After header');
}
step("rate_limit 2/60s: 204, 204, then 429 rate_limited (Retry-After: {$r->header('Retry-After')})");

// 8. 429: the plan's key cap (basic = 2 active keys).
$shop = expect('create basic account', admin('POST', '/v1/accounts', ['name' => 'Small Shop', 'plan' => 'basic']), 201);
foreach ([1, 2] as $n) {
    expect(
        "basic key $n",
        admin('POST', '/v1/api-keys', ['account_id' => $shop['id'], 'name' => "key $n", 'scope' => 'read']),
        201,
    );
}
$body = expect(
    'basic key 3',
    admin('POST', '/v1/api-keys', ['account_id' => $shop['id'], 'name' => 'key 3', 'scope' => 'read']),
    429,
    'plan_limit_reached',
);
if ($body['error'] !== 'API key limit reached for your plan') {
    fail("plan cap: error is {$body['error']}");
}
step('basic plan, third key -> 429 plan_limit_reached "API key limit reached for your plan"');

// 9. 400: a key in the URL is refused, whatever the endpoint.
expect('key in URL', call('GET', '/v1/api-key-info', [], null, ['api_key' => $key]), 400, 'key_in_url');
expect('key in the original URI', forward_auth('GET', '/api/v1/invoices?api_key=' . $key, []), 400, 'key_in_url');
step('?api_key=… -> 400 key_in_url');

// 10. Rotate with a grace period: both keys work until it ends (or the old one is revoked).
$rotated = expect('rotate', admin('POST', "/v1/api-keys/$keyId/rotate", ['grace_period_seconds' => 3600]), 201);
$newKey = $rotated['key'];
$previous = $rotated['previous'];
if ($rotated['rotated_from'] !== $keyId || $previous['status'] !== 'active' || empty($previous['revoked_at'])) {
    fail('rotate: unexpected answer ' . json_encode($rotated));
}
foreach (['old' => $key, 'new' => $newKey] as $label => $k) {
    expect("$label key during grace", forward_auth('GET', '/api/v1/invoices', bearer($k)), 204);
}
step("rotate -> 201 {$rotated['display_prefix']}… (old key active until {$previous['revoked_at']}); both keys -> 204");

// 11. Revoke the old key now: it stops at once, the new one keeps working.
$revoked = expect('revoke', admin('POST', "/v1/api-keys/$keyId/revoke"), 200);
if ($revoked['status'] !== 'revoked') {
    fail("revoke: status is {$revoked['status']}");
}
expect('revoked key', forward_auth('GET', '/api/v1/invoices', bearer($key)), 401, 'invalid_key');
expect('new key after revoke', forward_auth('GET', '/api/v1/invoices', bearer($newKey)), 204);
step('revoke old key -> 200 revoked; old key -> 401 invalid_key; new key -> 204');

// 12. The list shows display prefixes and statuses, never secrets.
$keys = expect('list keys', admin('GET', "/v1/api-keys?account_id={$account['id']}"), 200)['data'];
foreach ($keys as $k) {
    if (array_key_exists('key', $k)) {
        fail('a key list contains a secret');
    }
}
step('GET /v1/api-keys -> 200 [' . implode(', ', array_map(fn ($k) => "{$k['display_prefix']} {$k['status']}", $keys)) . ']');

echo "quickstart (PHP): all steps passed\n";
