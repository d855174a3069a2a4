-- Argo CD health check for modelops.dev/ModelDeployment.
-- Argo CD sets the global `obj` (the live object) and reads the returned table.
-- Lua 5.1 (Argo CD runs gopher-lua). Any field may be missing or malformed: never raise.

local function field(tbl, key)
  if type(tbl) ~= "table" then
    return nil
  end
  return tbl[key]
end

local function text(value)
  if type(value) == "string" and value ~= "" then
    return value
  end
  return nil
end

local function findCondition(status, conditionType)
  local conditions = field(status, "conditions")
  if type(conditions) ~= "table" then
    return nil
  end
  for _, condition in ipairs(conditions) do
    if field(condition, "type") == conditionType then
      return condition
    end
  end
  return nil
end

local function isTrue(condition)
  return field(condition, "status") == "True"
end

local function result(status, message)
  return { status = status, message = message }
end

-- The status describes an older spec (or no spec at all) until observedGeneration catches up.
local function notYetObserved(status, generation)
  local observed = tonumber(field(status, "observedGeneration"))
  if observed == nil then
    return true
  end
  return generation ~= nil and observed < generation
end

local function waitingMessage(generation)
  if generation == nil then
    return "Waiting for the operator to observe the latest generation"
  end
  return string.format("Waiting for the operator to observe generation %d", math.floor(generation))
end

local function health(object)
  local generation = tonumber(field(field(object, "metadata"), "generation"))
  local status = field(object, "status")
  if notYetObserved(status, generation) then
    return result("Progressing", waitingMessage(generation))
  end

  local phase = field(status, "phase")
  local message = text(field(status, "message"))
  local degraded = findCondition(status, "Degraded")
  if isTrue(degraded) then
    return result("Degraded", text(field(degraded, "message")) or message or "ModelDeployment is degraded")
  end
  if phase == "Degraded" then
    return result("Degraded", message or "ModelDeployment is degraded")
  end
  if phase == "Paused" then
    return result("Suspended", message or "ModelDeployment is paused")
  end
  if phase == "Healthy" and isTrue(findCondition(status, "Ready")) then
    return result("Healthy", message or "ModelDeployment is healthy")
  end
  return result("Progressing", message or "Waiting for the ModelDeployment to become healthy")
end

return health(obj)
