-- What the specs of the bundled examples share: running `ember` commands as
-- a user would, each bounded in time.
local example = {}

example.EMBER = os.getenv("EMBER_BIN") or "build/bin/ember"

-- Runs a shell command with a time bound; returns its output and status.
function example.sh(command, seconds)
  local pipe = assert(io.popen(("timeout %d %s 2>&1"):format(seconds, command)))
  local output = pipe:read("a")
  local _, _, status = pipe:close()
  return output, status
end

-- A function launch(n, args, seconds) running `ember launch -n n script args`
-- (within `seconds`, default 120).
function example.launcher(script)
  return function(n, args, seconds)
    return example.sh(("%s launch -n %d %s %s"):format(example.EMBER, n,
      script, args), seconds or 120)
  end
end

return example
