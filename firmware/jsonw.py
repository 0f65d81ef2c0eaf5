# A tiny JSON writer for messages whose key order and number text must be the same on the
# ESP32 (single-precision floats, unordered dicts) and on the unix port: keys are written in
# the order given and decimals come from integers (Fixed), never from floats.


class Fixed:
    """An integer in 10**-places units printed as a decimal: Fixed(1332, 2) -> 13.32."""

    def __init__(self, value, places):
        self.value = value
        self.places = places

    def text(self):
        v = self.value
        sign = "-" if v < 0 else ""
        v = -v if v < 0 else v
        if not self.places:
            return sign + str(v)
        scale = 10 ** self.places
        frac = str(v % scale)
        return "%s%d.%s%s" % (sign, v // scale, "0" * (self.places - len(frac)), frac)


class Raw:
    """JSON text written as it is (an object already rendered with obj())."""

    def __init__(self, text):
        self.text = text


def div_round(num, den):
    """Integer num/den rounded half away from zero (den > 0)."""
    if num < 0:
        return -((-num + den // 2) // den)
    return (num + den // 2) // den


def _str(s):
    out = ['"']
    for c in s:
        o = ord(c)
        if c == '"' or c == "\\":
            out.append("\\" + c)
        elif o < 0x20 or o > 0x7E:
            out.append("\\u%04x" % o if o < 0x10000 else "?")
        else:
            out.append(c)
    out.append('"')
    return "".join(out)


def value(v):
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, Fixed):
        return v.text()
    if isinstance(v, Raw):
        return v.text
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return _str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ",".join([value(x) for x in v]) + "]"
    if isinstance(v, dict):  # only for small nested objects whose key order is irrelevant
        return obj(sorted(v.items()))
    raise TypeError("cannot write %s as JSON" % type(v).__name__)


def obj(pairs):
    """[(key, value), ...] -> JSON object text with keys in that order."""
    return "{" + ",".join([_str(k) + ":" + value(v) for k, v in pairs]) + "}"
