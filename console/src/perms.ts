// What the logged-in principal may do, decided as the server decides it
// (tidings.server.principals): a grant is a glob in Python's fnmatch syntax (`*`, `?`,
// `[...]`, `[!...]`) over the whole channel name or job type, where `{sub}` stands for the
// principal's own name; admins may do everything. The console only hides what would be
// refused: the server checks every request again.

export type Action = "publish" | "subscribe" | "submit" | "work";

export interface Permissions {
  publish: string[];
  subscribe: string[];
  submit: string[];
  work: string[];
  admin: boolean;
}

/** `GET /v1/auth/me`. */
export interface Me {
  user: string;
  anonymous: boolean;
  permissions: Permissions;
  expires_at: string | null;
}

const compiled = new Map<string, RegExp>();

/** fnmatch.translate: the glob as an anchored regular expression. */
export function globToRegExp(pattern: string): RegExp {
  let out = "";
  let i = 0;
  const n = pattern.length;
  while (i < n) {
    const c = pattern[i++];
    if (c === "*") {
      if (!out.endsWith(".*")) out += ".*";
    } else if (c === "?") {
      out += ".";
    } else if (c === "[") {
      let j = i;
      if (j < n && pattern[j] === "!") j++;
      if (j < n && pattern[j] === "]") j++;
      while (j < n && pattern[j] !== "]") j++;
      if (j >= n) {
        out += "\\[";
      } else {
        let set = pattern.slice(i, j).replace(/\\/g, "\\\\");
        i = j + 1;
        if (set.startsWith("!")) set = `^${set.slice(1)}`;
        else if (set.startsWith("^")) set = `\\${set}`;
        out += `[${set}]`;
      }
    } else {
      out += c.replace(/[.*+?^${}()|[\]\\/-]/g, "\\$&");
    }
  }
  return new RegExp(`^(?:${out})$`, "s");
}

/** True when glob `pattern` (with `{sub}` = the principal's name) matches `target`. */
export function patternAllows(pattern: string, target: string, sub: string): boolean {
  const glob = pattern.includes("{sub}") ? pattern.split("{sub}").join(sub) : pattern;
  let re = compiled.get(glob);
  if (re === undefined) {
    try {
      re = globToRegExp(glob);
    } catch {
      re = /(?!)/; // a set the browser's regexes reject: match nothing, the server decides
    }
    compiled.set(glob, re);
  }
  return re.test(target);
}

/** May `me` do `action` on `target` (a channel name or a job type)? */
export function may(me: Me, action: Action, target: string): boolean {
  if (me.permissions.admin) return true;
  return (me.permissions[action] ?? []).some((p) => patternAllows(p, target, me.user));
}

/** Does `me` hold any grant for `action`? */
export function mayAny(me: Me, action: Action): boolean {
  return me.permissions.admin || (me.permissions[action] ?? []).length > 0;
}

/** May `me` cancel or retry a job: its submitter and admins (as the server's `_own`). */
export function mayOwn(me: Me, job: { submitted_by: string | null }): boolean {
  return me.permissions.admin || (!me.anonymous && job.submitted_by === me.user);
}
