-- Command-line options for scripts, in the manner of Python's argparse: a
-- list of options with defaults and help, parsed from `arg`, with --help and
-- clear errors for free.
--
--   local opts = require("ember.options").parse(arg, {
--     usage = "ember launch -n N train.lua [options]",
--     about = "What the script does.",
--     { "seed", 543, "random seed" },
--     { "gamma", 1.0, "discount factor" },
--     { "batch", true, "evaluate the policy once per step for all observers" },
--     { "device", "cpu", "where the policy runs", choices = { "cpu", "cuda" } },
--   })
--   print(opts.seed, opts.batch)
--
-- An option's kind comes from its default: integers take whole numbers,
-- numbers any number, strings any text, booleans are switches (--batch and
-- --no-batch). An option without a default says its kind:
-- { "sweep", nil, "world sizes to time", kind = "string" }. `choices` lists
-- the values allowed; `min` is the least value of a number.
-- Options are written --name VALUE or --name=VALUE; dashes and underscores
-- are the same (--log-interval, --log_interval) and the field is
-- opts.log_interval. Other arguments are an error unless `arguments = true`
-- is declared; then they are in opts.rest (all of them after "--").
local options = {}

local KINDS = { integer = true, number = true, string = true, boolean = true }
local METAVARS = { integer = "N", number = "X", string = "TEXT" }

local function kind_of(spec)
  if spec.kind ~= nil then return spec.kind end
  local default = spec[2]
  if math.type(default) == "integer" then return "integer" end
  return type(default)
end

local function field_of(name) return (name:gsub("-", "_")) end
local function flag_of(name) return "--" .. name:gsub("_", "-") end

-- The specs of `declared`, checked, by field name and in order.
local function read_specs(declared)
  if type(declared) ~= "table" then
    error("options.parse: expected a table of options, got " .. type(declared), 3)
  end
  local by_field, ordered = {}, {}
  for i, spec in ipairs(declared) do
    if type(spec) ~= "table" or type(spec[1]) ~= "string"
        or not spec[1]:match("^[%a][%w_-]*$") then
      error(("options.parse: option %d needs a name like 'log-interval'"):format(i), 3)
    end
    local kind = kind_of(spec)
    if not KINDS[kind] then
      error(("options.parse: option '%s' has no kind (give a default or " ..
        "kind='integer'|'number'|'string'|'boolean')"):format(spec[1]), 3)
    end
    local field = field_of(spec[1])
    if by_field[field] then
      error(("options.parse: option '%s' is declared twice"):format(spec[1]), 3)
    end
    by_field[field] = { name = spec[1], field = field, kind = kind,
      default = spec[2], help = spec[3] or "", choices = spec.choices,
      min = spec.min }
    ordered[#ordered + 1] = by_field[field]
  end
  return by_field, ordered
end

local function describe_default(o)
  if o.default == nil then return "" end
  if o.kind == "boolean" then
    return o.default and " (default: on)" or " (default: off)"
  end
  return (" (default: %s)"):format(tostring(o.default))
end

local function help_text(declared, ordered)
  local lines = { "usage: " .. (declared.usage or "SCRIPT [options]") }
  if declared.about then lines[#lines + 1] = "\n" .. declared.about end
  lines[#lines + 1] = "\noptions:"
  local rows, width = {}, 0
  for _, o in ipairs(ordered) do
    local left = flag_of(o.name)
    if o.kind == "boolean" then
      left = ("%s, --no-%s"):format(left, o.name:gsub("_", "-"))
    elseif o.choices then
      left = ("%s {%s}"):format(left, table.concat(o.choices, ","))
    else
      left = left .. " " .. METAVARS[o.kind]
    end
    rows[#rows + 1] = { left, o.help .. describe_default(o) }
    width = math.max(width, #left)
  end
  rows[#rows + 1] = { "-h, --help", "show this help" }
  width = math.max(width, 10)
  for _, row in ipairs(rows) do
    lines[#lines + 1] = ("  %-" .. width .. "s  %s"):format(row[1], row[2])
  end
  return table.concat(lines, "\n")
end

local function convert(o, text)
  local value = text
  if o.kind == "integer" then
    value = math.tointeger(tonumber(text))
    if value == nil then return nil, "a whole number" end
  elseif o.kind == "number" then
    value = tonumber(text)
    if value == nil or value ~= value or value == math.huge
        or value == -math.huge then
      return nil, "a finite number"
    end
  end
  if o.min ~= nil and value < o.min then
    return nil, ("a %s >= %s"):format(o.kind == "integer" and "whole number"
      or "number", tostring(o.min))
  end
  if o.choices then
    local names = {}
    for i, choice in ipairs(o.choices) do
      if choice == value then return value end
      names[i] = tostring(choice)
    end
    return nil, "one of " .. table.concat(names, ", ")
  end
  return value
end

-- options.try_parse(argv, declared) -> opts, or nil and the error message,
-- or the string "help" and the help text when --help is asked for.
function options.try_parse(argv, declared)
  local by_field, ordered = read_specs(declared)
  local opts = { rest = {} }
  for _, o in ipairs(ordered) do opts[o.field] = o.default end
  local i = 1
  while i <= #argv do
    local word = argv[i]
    if word == "-h" or word == "--help" then
      return "help", help_text(declared, ordered)
    end
    local name, inline = word:match("^%-%-([%w_-]+)=(.*)$")
    name = name or word:match("^%-%-([%w_-]+)$")
    if word == "--" then
      -- Everything after "--" is an argument, even if it looks like an option.
      for j = i + 1, #argv do opts.rest[#opts.rest + 1] = argv[j] end
      break
    elseif name == nil and word:match("^%-.") and not tonumber(word) then
      return nil, ("unknown option '%s'"):format(word)
    elseif name == nil then
      opts.rest[#opts.rest + 1] = word
    else
      local field = field_of(name)
      local o = by_field[field]
      local negated = field:match("^no_(.*)$")
      if o == nil and negated and by_field[negated]
          and by_field[negated].kind == "boolean" and inline == nil then
        opts[negated] = false
      elseif o == nil then
        return nil, ("unknown option '%s'"):format(word)
      elseif o.kind == "boolean" then
        if inline ~= nil then
          return nil, ("option %s is a switch and takes no value"):format(
            flag_of(o.name))
        end
        opts[field] = true
      else
        local text = inline
        if text == nil then
          i = i + 1
          text = argv[i]
        end
        -- "--out --seed 3" forgot the value of --out.
        if text == nil or (inline == nil and text:match("^%-%-.")) then
          return nil, ("option %s needs a value"):format(flag_of(o.name))
        end
        local value, wanted = convert(o, text)
        if value == nil then
          return nil, ("option %s needs %s, got '%s'"):format(
            flag_of(o.name), wanted, text)
        end
        opts[field] = value
      end
    end
    i = i + 1
  end
  if #opts.rest > 0 and not declared.arguments then
    return nil, ("unexpected argument '%s'"):format(opts.rest[1])
  end
  return opts
end

-- options.parse(argv, declared) -> opts. On --help prints the help and exits
-- 0; on a bad argument prints what was wrong and the usage, and exits 2.
function options.parse(argv, declared)
  local opts, message = options.try_parse(argv or {}, declared)
  if opts == "help" then
    print(message)
    os.exit(0)
  elseif opts == nil then
    io.stderr:write(("%s\nusage: %s\nrun with --help for the options\n"):format(
      message, declared.usage or "SCRIPT [options]"))
    os.exit(2)
  end
  return opts
end

return options
