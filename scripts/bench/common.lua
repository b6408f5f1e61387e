-- What the benchmarks share: JSON-line output and memory readings.
-- Load it with dofile next to the script: see scripts/bench/tensor.lua.
local common = {}

-- Prints {"bench":"<name>", ...fields sorted by key} on one line.
function common.emit(name, fields)
  local parts = { ('"bench":"%s"'):format(name) }
  local keys = {}
  for key in pairs(fields) do keys[#keys + 1] = key end
  table.sort(keys)
  for _, key in ipairs(keys) do
    local value = fields[key]
    if math.type(value) == "float" then
      parts[#parts + 1] = ('"%s":%.6g'):format(key, value)
    elseif type(value) == "number" then
      parts[#parts + 1] = ('"%s":%d'):format(key, value)
    elseif type(value) == "boolean" then
      parts[#parts + 1] = ('"%s":%s'):format(key, tostring(value))
    else
      parts[#parts + 1] = ('"%s":"%s"'):format(key, tostring(value))
    end
  end
  print("{" .. table.concat(parts, ",") .. "}")
  io.stdout:flush()
end

-- Resident set size of this process, in bytes.
function common.rss_bytes()
  local f = assert(io.open("/proc/self/statm"))
  local _, resident = f:read("n", "n")
  f:close()
  return resident * 4096
end

return common
