-- wrk script: full purchases on the event in $EVENT_ID. Each wrk thread acts as one buyer (the
-- thread's line of $TOKENS_FILE, so a payment is always made by the reservation's owner): a
-- connection reserves one seat (fresh Idempotency-Key), and the next request of the thread
-- pays a reservation whose 201 came back (tok_visa). `done` prints the purchases completed, so
-- the script that runs it can divide by the duration (wrk's own rate counts both requests).
local tokens = {}
for line in io.lines(os.getenv("TOKENS_FILE")) do
    tokens[#tokens + 1] = line
end
local reserve_body = string.format('{"event_id":"%s","section":"Floor","quantity":1}', os.getenv("EVENT_ID"))
local threads = {}
local started = 0

function setup(thread)
    started = started + 1
    thread:set("number", started)
    threads[#threads + 1] = thread
end

function init(args)
    token = tokens[((number - 1) % #tokens) + 1]
    prefix = string.format("lean-buy-%d-%d-%d", math.random(1, 2 ^ 30), os.time(), number)
    pending = {}
    sent, reserved, paid = 0, 0, 0
end

request = function()
    sent = sent + 1
    local headers = {
        ["Authorization"] = "Bearer " .. token,
        ["Content-Type"] = "application/json",
        ["Idempotency-Key"] = string.format("%s-%d", prefix, sent),
    }
    local reservation = table.remove(pending)
    if reservation then
        return wrk.format("POST", "/api/payments", headers, string.format(
            '{"reservation_id":"%s","payment_method":{"type":"card","token":"tok_visa"}}', reservation))
    end
    return wrk.format("POST", "/api/reservations", headers, reserve_body)
end

response = function(status, headers, body)
    if status ~= 201 then
        return
    end
    -- A reservation's body has `"payment_id":null` too: tell them apart by status.
    if body:find('"status":"captured"', 1, true) then
        paid = paid + 1
    elseif body:find('"status":"pending"', 1, true) then
        local reservation = body:match('"reservation_id"%s*:%s*"([^"]+)"')
        if reservation then
            reserved = reserved + 1
            pending[#pending + 1] = reservation
        end
    end
end

function done(summary, latency, requests)
    local reserved_total, paid_total = 0, 0
    for _, thread in ipairs(threads) do
        reserved_total = reserved_total + thread:get("reserved")
        paid_total = paid_total + thread:get("paid")
    end
    io.write(string.format("lean purchases: reserved %d, paid %d\n", reserved_total, paid_total))
end
