# The calls that set a sale up on the service at $BASE, shared by bench-lean.sh and
# bench-join.sh (sourced; they need curl and jq).

post() { curl -sf -X POST "$BASE$1" -H 'Content-Type: application/json' "${@:3}" -d "$2"; }

account() { # account EMAIL ROLE -> token
    post /auth/register "{\"email\":\"$1\",\"password\":\"bench-password-1\",\"name\":\"bench\",\"role\":\"$2\"}" >/dev/null
    post /auth/login "{\"email\":\"$1\",\"password\":\"bench-password-1\"}" | jq -r .token
}

open_sale() { # open_sale NAME ORGANIZER_TOKEN -> event id: one section ("Floor") of 1 000 000 seats, on sale
    local starts ends event transition
    starts=$(date -u -d '+30 days' +%Y-%m-%dT%H:%M:%SZ)
    ends=$(date -u -d '+30 days 3 hours' +%Y-%m-%dT%H:%M:%SZ)
    event=$(post /api/events "{\"name\":\"$1\",\"venue\":{\"name\":\"Arena\",\"address\":\"1 Way\"},
        \"starts_at\":\"$starts\",\"ends_at\":\"$ends\",\"currency\":\"USD\",
        \"sections\":[{\"name\":\"Floor\",\"capacity\":1000000,\"price_cents\":5000}]}" \
        -H "Authorization: Bearer $2" | jq -r .id)
    for transition in publish open-sales; do
        post "/api/events/$event/$transition" '' -H "Authorization: Bearer $2" >/dev/null
    done
    echo "$event"
}
