//! A builder for `nft -f` scripts: one command per line (map elements one per line inside the
//! braces), so the line number nft reports for a failure points at one object.

use std::fmt::Write as _;

/// A growing `nft -f` script for one table of one family, counting the objects it writes.
#[derive(Debug)]
pub struct Script<'a> {
    out: &'a mut String,
    /// `ip kproxy` or `ip6 kproxy`.
    table: String,
    /// Chains, rules, sets and elements added by this script (deletions not counted).
    pub objects: u64,
}

impl<'a> Script<'a> {
    /// Starts writing commands for `family table` (e.g. `ip`, `kproxy`) onto `out`.
    pub fn new(out: &'a mut String, family: &str, table: &str) -> Self {
        Script {
            out,
            table: format!("{family} {table}"),
            objects: 0,
        }
    }

    /// Writes a raw command line.
    pub fn line(&mut self, text: std::fmt::Arguments<'_>) {
        let _ = self.out.write_fmt(text);
        self.out.push('\n');
    }

    /// `add chain <table> <name>` (a regular chain; a no-op if it exists).
    pub fn add_chain(&mut self, name: &str) {
        self.objects += 1;
        let _ = writeln!(self.out, "add chain {} {name}", self.table);
    }

    /// `add chain` for a base chain attached to a hook.
    pub fn add_base_chain(&mut self, name: &str, kind: &str, hook: &str, priority: i32) {
        self.objects += 1;
        let _ = writeln!(
            self.out,
            "add chain {} {name} {{ type {kind} hook {hook} priority {priority} ; policy accept ; }}",
            self.table
        );
    }

    /// `flush chain`: removes every rule of the chain.
    pub fn flush_chain(&mut self, name: &str) {
        let _ = writeln!(self.out, "flush chain {} {name}", self.table);
    }

    /// `delete chain`.
    pub fn delete_chain(&mut self, name: &str) {
        let _ = writeln!(self.out, "delete chain {} {name}", self.table);
    }

    /// `add rule <table> <chain> <rule>`.
    pub fn add_rule(&mut self, chain: &str, rule: &str) {
        self.objects += 1;
        let _ = writeln!(self.out, "add rule {} {chain} {rule}", self.table);
    }

    /// `add set` or `add map` with its body (`type …; flags …;`).
    pub fn add_container(&mut self, what: &str, name: &str, body: &str) {
        self.objects += 1;
        let _ = writeln!(self.out, "add {what} {} {name} {{ {body} }}", self.table);
    }

    /// `delete set`.
    pub fn delete_set(&mut self, name: &str) {
        let _ = writeln!(self.out, "delete set {} {name}", self.table);
    }

    /// `add element <table> <set> { e1, e2, … }`, one element per line; nothing when empty.
    pub fn add_elements<I, S>(&mut self, set: &str, elements: I)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.elements("add", set, elements, true);
    }

    /// `delete element <table> <set> { k1, k2, … }`; nothing when empty.
    pub fn delete_elements<I, S>(&mut self, set: &str, keys: I)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.elements("delete", set, keys, false);
    }

    fn elements<I, S>(&mut self, verb: &str, set: &str, items: I, count: bool)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut items = items.into_iter().peekable();
        if items.peek().is_none() {
            return;
        }
        let _ = write!(self.out, "{verb} element {} {set} {{", self.table);
        let mut first = true;
        for item in items {
            if count {
                self.objects += 1;
            }
            self.out.push_str(if first { "\n\t" } else { ",\n\t" });
            self.out.push_str(item.as_ref());
            first = false;
        }
        self.out.push_str("\n}\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elements_go_one_per_line_and_are_counted() {
        let mut out = String::new();
        let mut s = Script::new(&mut out, "ip", "kproxy");
        s.add_elements("m", ["a : drop", "b : accept"]);
        s.delete_elements("m", ["c"]);
        s.add_elements("m", Vec::<String>::new());
        assert_eq!(s.objects, 2);
        assert_eq!(
            out,
            "add element ip kproxy m {\n\ta : drop,\n\tb : accept\n}\n\
             delete element ip kproxy m {\n\tc\n}\n"
        );
    }
}
