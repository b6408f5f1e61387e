-- What the benchmarks share: JSON-line output and memory readings.
-- Load it with dofile next to the script: see scripts/bench/tensor.lua.
local common = {}

-- Text escaped for a JSON string (an error message may hold anything).
local function json_text(text)
  return (text:gsub('[%c"\\]', function(c)
    if c == '"' or c == "\\" then return "\\" .. c end
    return ("\\u%04x"):format(c:byte())
  end))
end

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
      parts[#parts + 1] = ('"%s":"%s"'):format(key, json_text(tostring(value)))
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

-- A size field of /proc/self/status ("VmRSS", "VmHWM": the peak RSS), in
-- bytes; nil where the system has no such field.
function common.status_bytes(field)
  local f = io.open("/proc/self/status")
  if f == nil then return nil end
  local text = f:read("a")
  f:close()
  local kib = text:match("\n" .. field .. ":%s*(%d+) kB")
  return kib and tonumber(kib) * 1024
end

return common
