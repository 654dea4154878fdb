"""Benchmark of the response cache and of prompt compaction.

Run it from the repository root:

    .venv/bin/python bench/cache_and_compaction.py            # about 10 seconds
    .venv/bin/python bench/cache_and_compaction.py --bpe FILE  # exact o200k_base counts too

It prints a table and writes every figure, the machine's facts and the command to
`bench/results/cache_and_compaction.json`. It is a measurement, not a test.

A. Cache hit latency inside the process. One answer (about 2 KB of text, as a chat answer of a
   few paragraphs) is stored in a `MemoryStore` and in a `SqliteStore` (a file in a temp dir);
   then, after a warm-up, `await store.get(key)` followed by `answer.to_chunks()` (what a
   streamed hit costs before rendering) is timed over many hits, one at a time, on the event
   loop. Targets: p99 < 1 ms (memory), < 3 ms (sqlite). For context it also times a store's
   put and the work every cacheable request pays: computing `cache_key` for the agent request
   of part B.

B. Compaction saving. A realistic agent request: a system prompt, a short conversation with
   one tool call and its result, and 20 tool definitions written for this benchmark in the
   style of public APIs and agent frameworks (weather, calendar, email, files, web, issues,
   chat, tasks, SQL, money, maps): long descriptions, generated schemas with a `title` on
   every object and property, `examples`, `$comment`, and spelled-out defaults such as
   `additionalProperties: true` and `minLength: 0`. `compact` runs with three profiles:
   schemas only (no description is cut), the default settings (tool descriptions cut to 400
   characters, at a sentence end), and a tight one (200, and schema descriptions to 80); the
   case of a tool_choice naming one function is measured too. Prompt tokens are counted with
   `count_tokens` (the documented approximation, and exactly with o200k_base when a local BPE
   file is given with --bpe or found in an installed `bpe-openai` package: tiktoken itself
   would download it). Target: >= 30% fewer prompt tokens. Each tool's schema is checked
   before and after against sample instances made from it (valid ones from its examples and
   defaults; invalid ones with a required property missing, each property of the wrong type,
   out of its enum, range, length or pattern, and non-objects), with and without format
   checking: every verdict must agree.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import datetime as dt
import importlib.metadata
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import orjson

from hedge.cache import CachedAnswer, CacheStore
from hedge.cache.keys import cache_key
from hedge.cache.memory import MemoryStore
from hedge.cache.sqlite import SqliteStore
from hedge.compaction import CompactionSettings, _compact_function_memo, compact
from hedge.tokens import (
    Tokenizer,
    approx_tokens,
    bundled_bpe_file,
    count_tokens,
    tiktoken_tokenizer,
)
from hedge.types import ChatRequest, ChatResponse, Choice, Usage

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results" / "cache_and_compaction.json"

# ---- the 20 tools -------------------------------------------------------------------------


def _p(kind: str, title: str, description: str, examples: list[Any], **more: Any) -> dict[str, Any]:
    return {"type": kind, "title": title, "description": description, "examples": examples, **more}


def _obj(
    title: str, properties: dict[str, Any], required: list[str], **more: Any
) -> dict[str, Any]:
    return {
        "type": "object",
        "title": title,
        "properties": properties,
        "required": required,
        "additionalProperties": more.pop("additionalProperties", True),
        **more,
    }


_UNITS = {
    "title": "Units",
    "type": "string",
    "enum": ["metric", "imperial", "standard"],
    "description": "The unit system for temperatures, wind speeds and precipitation.",
    "$comment": "Mirrors the units parameter of the upstream weather API.",
}

_DATETIME = "An ISO 8601 date-time with a UTC offset, for example 2025-03-14T09:30:00+01:00."


def _tool(name: str, description: str, parameters: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {"name": name, "description": description, "parameters": parameters},
    }


TOOLS: list[dict[str, Any]] = [
    _tool(
        "get_current_weather",
        "Get the current weather conditions for a specific location. Use this tool whenever "
        "the user asks about the weather right now, today, or at the present moment in a city, "
        "region or at a set of coordinates. The response includes the temperature, the "
        "apparent temperature, humidity, wind speed and direction, cloud cover, visibility and "
        "a short human-readable summary of the conditions. Do not use this tool for forecasts "
        "of future days: use get_weather_forecast for those instead. If the user does not name "
        "a location, ask them for one rather than guessing, unless their location is already "
        "known from earlier in the conversation. Temperatures are returned in the unit system "
        "requested; when the user has not expressed a preference, choose the unit system that "
        "is customary in the location being asked about. Note that the data is refreshed "
        "every ten minutes, so repeated calls within a short period return the same values.",
        _obj(
            "GetCurrentWeatherArgs",
            {
                "location": _p(
                    "string",
                    "Location",
                    "The city and country, for example 'Paris, France', or a place name that "
                    "the geocoder can resolve. Prefer including the country to avoid ambiguity "
                    "between places that share a name.",
                    ["Paris, France", "Springfield, Illinois, USA"],
                    minLength=1,
                ),
                "units": {"$ref": "#/$defs/Units", "default": "metric"},
                "include_air_quality": _p(
                    "boolean",
                    "Include Air Quality",
                    "Whether to include the air quality index and pollutant concentrations in "
                    "the response. Only request this when the user asks about air quality, as "
                    "it makes the response larger.",
                    [False],
                    default=False,
                ),
            },
            ["location"],
            **{"$defs": {"Units": _UNITS}},
        ),
    ),
    _tool(
        "get_weather_forecast",
        "Get a daily or hourly weather forecast for a location for up to fourteen days ahead. "
        "Use this tool when the user asks what the weather will be like later today, tomorrow, "
        "this weekend, next week, or on a specific future date. Each forecast period includes "
        "the minimum and maximum temperature, the probability and expected amount of "
        "precipitation, wind, and a summary. For questions about the current conditions use "
        "get_current_weather instead. Hourly forecasts are only available for the next 48 "
        "hours; for later dates request a daily forecast. When the user asks about a date more "
        "than fourteen days away, explain that forecasts are not available that far ahead.",
        _obj(
            "GetWeatherForecastArgs",
            {
                "location": _p(
                    "string",
                    "Location",
                    "The city and country, or a place name that the geocoder can resolve.",
                    ["Tokyo, Japan"],
                    minLength=1,
                ),
                "days": _p(
                    "integer",
                    "Days",
                    "How many days of forecast to return, starting today.",
                    [3, 7],
                    minimum=1,
                    maximum=14,
                    default=3,
                ),
                "granularity": _p(
                    "string",
                    "Granularity",
                    "Whether to return one forecast period per day or per hour. Hourly "
                    "granularity is limited to the next 48 hours.",
                    ["daily"],
                    enum=["daily", "hourly"],
                    default="daily",
                ),
                "units": {"$ref": "#/$defs/Units", "default": "metric"},
            },
            ["location"],
            **{"$defs": {"Units": _UNITS}},
        ),
    ),
    _tool(
        "search_calendar_events",
        "Search the user's calendars for events that match a text query and/or fall within a "
        "time range. Use this tool to answer questions such as 'what do I have on Friday', "
        "'when is my next meeting with Alice', or to check for conflicts before creating a "
        "new event. Results are sorted by start time and include the event identifier, title, "
        "start and end times, location, attendees and the calendar the event belongs to. "
        "Recurring events are expanded into their individual occurrences within the range. "
        "If no time range is given, the search covers the next thirty days. Always use the "
        "returned event identifier when you later need to update or delete an event.",
        _obj(
            "SearchCalendarEventsArgs",
            {
                "query": _p(
                    "string",
                    "Query",
                    "Free text matched against event titles, descriptions, locations and "
                    "attendee names. Leave empty to list every event in the range.",
                    ["standup", "dentist"],
                    minLength=0,
                ),
                "time_min": _p(
                    "string", "Time Min", _DATETIME, ["2025-03-14T00:00:00Z"], format="date-time"
                ),
                "time_max": _p(
                    "string", "Time Max", _DATETIME, ["2025-03-21T00:00:00Z"], format="date-time"
                ),
                "calendar_ids": {
                    "type": "array",
                    "title": "Calendar Ids",
                    "description": "Restrict the search to these calendars. Leave out to "
                    "search every calendar the user has access to.",
                    "items": {"type": "string", "title": "Calendar Id", "minLength": 1},
                    "minItems": 0,
                    "uniqueItems": False,
                    "examples": [["primary", "team@example.com"]],
                },
                "max_results": _p(
                    "integer",
                    "Max Results",
                    "The largest number of events to return.",
                    [25],
                    minimum=1,
                    maximum=250,
                    default=25,
                ),
            },
            [],
        ),
    ),
    _tool(
        "create_calendar_event",
        "Create a new event on one of the user's calendars. Before creating an event, make "
        "sure you know the title, the start time and either the end time or the duration; "
        "ask the user for anything that is missing instead of inventing it. Check for "
        "conflicts with search_calendar_events first when the user cares about their "
        "availability. Attendees receive an invitation by email unless send_invitations is "
        "false. Times must include a UTC offset; when the user gives a local time, use the "
        "time zone of their primary calendar. The response contains the new event's "
        "identifier and a link to it. Never create duplicate events: if a call fails with a "
        "timeout, search for the event before trying again.",
        _obj(
            "CreateCalendarEventArgs",
            {
                "title": _p(
                    "string",
                    "Title",
                    "The event's title as it appears in the calendar.",
                    ["Quarterly planning"],
                    minLength=1,
                ),
                "start": _p(
                    "string", "Start", _DATETIME, ["2025-03-14T09:30:00+01:00"], format="date-time"
                ),
                "end": _p(
                    "string", "End", _DATETIME, ["2025-03-14T10:30:00+01:00"], format="date-time"
                ),
                "location": _p(
                    "string",
                    "Location",
                    "A room, an address or a video call link.",
                    ["Room 4.02"],
                    minLength=0,
                ),
                "description": _p(
                    "string",
                    "Description",
                    "Notes shown in the event body.",
                    ["Agenda: review goals."],
                    minLength=0,
                ),
                "attendees": {
                    "type": "array",
                    "title": "Attendees",
                    "description": "Email addresses of the people to invite.",
                    "items": {"type": "string", "format": "email", "title": "Attendee"},
                    "minItems": 0,
                    "uniqueItems": True,
                    "examples": [["alice@example.com"]],
                },
                "calendar_id": _p(
                    "string",
                    "Calendar Id",
                    "The calendar to add the event to.",
                    ["primary"],
                    default="primary",
                ),
                "send_invitations": _p(
                    "boolean",
                    "Send Invitations",
                    "Whether to email invitations to the attendees.",
                    [True],
                    default=True,
                ),
            },
            ["title", "start", "end"],
        ),
    ),
    _tool(
        "update_calendar_event",
        "Change an existing calendar event: its title, time, location, description or "
        "attendees. Only the fields you pass are changed; everything else is kept. Use the "
        "event identifier returned by search_calendar_events or create_calendar_event; never "
        "guess an identifier. When moving an event that has attendees, they are notified of "
        "the change unless notify_attendees is false. To cancel an event use "
        "delete_calendar_event instead of changing its title.",
        _obj(
            "UpdateCalendarEventArgs",
            {
                "event_id": _p(
                    "string",
                    "Event Id",
                    "The identifier of the event to change.",
                    ["evt_8f2k1"],
                    minLength=1,
                ),
                "title": _p("string", "Title", "The new title.", ["Planning (moved)"]),
                "start": _p(
                    "string", "Start", _DATETIME, ["2025-03-15T09:30:00+01:00"], format="date-time"
                ),
                "end": _p(
                    "string", "End", _DATETIME, ["2025-03-15T10:30:00+01:00"], format="date-time"
                ),
                "location": _p("string", "Location", "The new location.", ["Room 1.10"]),
                "notify_attendees": _p(
                    "boolean",
                    "Notify Attendees",
                    "Whether attendees are told about the change.",
                    [True],
                    default=True,
                ),
            },
            ["event_id"],
        ),
    ),
    _tool(
        "delete_calendar_event",
        "Delete (cancel) an event from the user's calendar. This cannot be undone, so confirm "
        "with the user before deleting unless they have clearly asked for it. For recurring "
        "events, choose whether to delete only this occurrence or the whole series. Attendees "
        "receive a cancellation notice unless notify_attendees is false.",
        _obj(
            "DeleteCalendarEventArgs",
            {
                "event_id": _p(
                    "string",
                    "Event Id",
                    "The identifier of the event to delete.",
                    ["evt_8f2k1"],
                    minLength=1,
                ),
                "scope": _p(
                    "string",
                    "Scope",
                    "For a recurring event: this occurrence only, or every occurrence.",
                    ["this"],
                    enum=["this", "all"],
                    default="this",
                ),
                "notify_attendees": _p(
                    "boolean",
                    "Notify Attendees",
                    "Whether attendees receive a cancellation notice.",
                    [True],
                    default=True,
                ),
            },
            ["event_id"],
        ),
    ),
    _tool(
        "send_email",
        "Send an email from the user's account. Use this only when the user has asked you to "
        "send a message and you have confirmed the recipients, the subject and the body with "
        "them; when in doubt, draft the message in the conversation first and ask for "
        "approval. The body is plain text unless is_html is true. Attachments must be files "
        "that exist in the user's drive; refer to them by the identifiers returned by "
        "search_files. Replies should set in_reply_to to the identifier of the message being "
        "answered so that the conversation is threaded correctly. The response contains the "
        "identifier of the sent message. Sending cannot be undone.",
        _obj(
            "SendEmailArgs",
            {
                "to": {
                    "type": "array",
                    "title": "To",
                    "description": "Recipient email addresses.",
                    "items": {"type": "string", "format": "email", "title": "Address"},
                    "minItems": 1,
                    "examples": [["bob@example.com"]],
                },
                "cc": {
                    "type": "array",
                    "title": "Cc",
                    "description": "Carbon-copy recipients.",
                    "items": {"type": "string", "format": "email", "title": "Address"},
                    "minItems": 0,
                    "examples": [[]],
                },
                "subject": _p(
                    "string", "Subject", "The subject line.", ["Lunch on Friday?"], minLength=1
                ),
                "body": _p("string", "Body", "The message text.", ["Hi Bob, ..."], minLength=1),
                "is_html": _p(
                    "boolean", "Is Html", "Whether the body is HTML.", [False], default=False
                ),
                "in_reply_to": _p(
                    "string",
                    "In Reply To",
                    "The identifier of the message this one answers.",
                    ["msg_19ab"],
                ),
                "attachment_ids": {
                    "type": "array",
                    "title": "Attachment Ids",
                    "description": "Identifiers of drive files to attach.",
                    "items": {"type": "string", "title": "Attachment Id"},
                    "minItems": 0,
                    "examples": [["file_77"]],
                },
            },
            ["to", "subject", "body"],
        ),
    ),
    _tool(
        "search_email",
        "Search the user's mailbox with a query in the usual search syntax (from:, to:, "
        "subject:, has:attachment, before:, after:, is:unread and free text). Returns message "
        "summaries: identifier, sender, recipients, subject, date, a snippet of the body and "
        "labels. Use read_email with an identifier to get the full body. Results are newest "
        "first. Keep queries specific to avoid returning large numbers of irrelevant messages.",
        _obj(
            "SearchEmailArgs",
            {
                "query": _p(
                    "string",
                    "Query",
                    "The search query.",
                    ["from:alice subject:invoice after:2025/01/01"],
                ),
                "max_results": _p(
                    "integer",
                    "Max Results",
                    "How many messages to return.",
                    [10],
                    minimum=1,
                    maximum=100,
                    default=10,
                ),
                "include_spam_trash": _p(
                    "boolean",
                    "Include Spam Trash",
                    "Whether to search spam and trash too.",
                    [False],
                    default=False,
                ),
            },
            ["query"],
        ),
    ),
    _tool(
        "read_email",
        "Read one email message in full: headers, plain-text body (HTML bodies are converted "
        "to text), and the list of attachments with their names, types and sizes. Use the "
        "identifier returned by search_email. Long bodies are truncated to max_chars "
        "characters; ask for more only if the user needs the rest.",
        _obj(
            "ReadEmailArgs",
            {
                "message_id": _p(
                    "string", "Message Id", "The message's identifier.", ["msg_19ab"], minLength=1
                ),
                "max_chars": _p(
                    "integer",
                    "Max Chars",
                    "Truncate the body to this many characters.",
                    [20000],
                    minimum=100,
                    default=20000,
                ),
            },
            ["message_id"],
        ),
    ),
    _tool(
        "search_files",
        "Search the user's drive for files and folders by name, content, type or modification "
        "date. Use this tool to find documents the user refers to by name or topic before "
        "reading them with read_file, or to find attachment identifiers for send_email. The "
        "query matches file names and, for text documents, their contents. Results include "
        "the file identifier, name, path, MIME type, size, owner and last modification time. "
        "Results are limited to files the user can access. Prefer narrow queries; broad "
        "queries can return thousands of files and only the first page is returned.",
        _obj(
            "SearchFilesArgs",
            {
                "query": _p(
                    "string", "Query", "Text matched against names and contents.", ["budget 2025"]
                ),
                "mime_types": {
                    "type": "array",
                    "title": "Mime Types",
                    "description": "Only return files of these MIME types.",
                    "items": {"type": "string", "title": "Mime Type"},
                    "minItems": 0,
                    "examples": [["application/pdf"]],
                },
                "modified_after": _p(
                    "string",
                    "Modified After",
                    _DATETIME,
                    ["2025-01-01T00:00:00Z"],
                    format="date-time",
                ),
                "folder_id": _p(
                    "string", "Folder Id", "Only search inside this folder.", ["fld_root"]
                ),
                "page_size": _p(
                    "integer",
                    "Page Size",
                    "How many results to return.",
                    [20],
                    minimum=1,
                    maximum=100,
                    default=20,
                ),
            },
            ["query"],
        ),
    ),
    _tool(
        "read_file",
        "Read the contents of a file from the user's drive. Text files and documents are "
        "returned as text; spreadsheets are returned as CSV of the first sheet unless a "
        "sheet is named; PDFs are converted to text page by page. Binary files such as images "
        "cannot be read with this tool. Large files are returned in ranges: use offset and "
        "limit to page through them rather than reading everything at once.",
        _obj(
            "ReadFileArgs",
            {
                "file_id": _p(
                    "string",
                    "File Id",
                    "The identifier from search_files.",
                    ["file_77"],
                    minLength=1,
                ),
                "offset": _p(
                    "integer",
                    "Offset",
                    "The character offset to start at.",
                    [0],
                    minimum=0,
                    default=0,
                ),
                "limit": _p(
                    "integer",
                    "Limit",
                    "How many characters to return.",
                    [50000],
                    minimum=1,
                    maximum=200000,
                    default=50000,
                ),
                "sheet": _p("string", "Sheet", "For spreadsheets: the sheet to read.", ["Q1"]),
            },
            ["file_id"],
        ),
    ),
    _tool(
        "web_search",
        "Search the web and return the most relevant results with their titles, URLs and "
        "snippets. Use this tool for questions about current events, facts that may have "
        "changed recently, or anything you are not confident about. Do not use it for "
        "questions about the user's own data (calendar, email, files), which have their own "
        "tools. Write queries the way a person would type them into a search engine: short "
        "and specific. When the snippets are not enough, use fetch_url to read a page. "
        "Always cite the URLs of the pages you rely on in your answer.",
        _obj(
            "WebSearchArgs",
            {
                "query": _p(
                    "string", "Query", "The search query.", ["latest python release"], minLength=1
                ),
                "num_results": _p(
                    "integer",
                    "Num Results",
                    "How many results to return.",
                    [5],
                    minimum=1,
                    maximum=20,
                    default=5,
                ),
                "recency_days": _p(
                    "integer",
                    "Recency Days",
                    "Only return pages published in the last N days.",
                    [7],
                    minimum=1,
                ),
                "site": _p(
                    "string", "Site", "Restrict results to one domain.", ["docs.python.org"]
                ),
            },
            ["query"],
        ),
    ),
    _tool(
        "fetch_url",
        "Fetch a web page and return its main content converted to Markdown, without "
        "navigation, advertisements or scripts. Use this after web_search when a result "
        "looks relevant but its snippet is not enough, or when the user gives you a URL. "
        "Only http and https URLs are supported. Pages behind a login cannot be fetched. "
        "Long pages are truncated to max_chars characters.",
        _obj(
            "FetchUrlArgs",
            {
                "url": _p(
                    "string",
                    "Url",
                    "The page's URL.",
                    ["https://example.com/post"],
                    format="uri",
                    minLength=1,
                ),
                "max_chars": _p(
                    "integer",
                    "Max Chars",
                    "Truncate the content to this many characters.",
                    [20000],
                    minimum=500,
                    default=20000,
                ),
            },
            ["url"],
        ),
    ),
    _tool(
        "create_issue",
        "Open a new issue in a repository on the code hosting service. Use this when the user "
        "asks you to file a bug report, a feature request or a task. Write a concise title "
        "and a body in Markdown that states the problem, the steps to reproduce it, what was "
        "expected and what happened instead. Search for existing issues with search_issues "
        "first to avoid duplicates. Labels and assignees must already exist in the "
        "repository; unknown labels are rejected.",
        _obj(
            "CreateIssueArgs",
            {
                "repository": _p(
                    "string",
                    "Repository",
                    "owner/name of the repository.",
                    ["acme/widgets"],
                    pattern="^[\\w.-]+/[\\w.-]+$",
                ),
                "title": _p(
                    "string",
                    "Title",
                    "The issue's title.",
                    ["Crash on empty input"],
                    minLength=1,
                    maxLength=256,
                ),
                "body": _p(
                    "string",
                    "Body",
                    "The issue's description in Markdown.",
                    ["Steps to reproduce: ..."],
                    minLength=0,
                ),
                "labels": {
                    "type": "array",
                    "title": "Labels",
                    "description": "Labels to add.",
                    "items": {"type": "string", "title": "Label"},
                    "uniqueItems": True,
                    "examples": [["bug"]],
                },
                "assignees": {
                    "type": "array",
                    "title": "Assignees",
                    "description": "User names to assign.",
                    "items": {"type": "string", "title": "Assignee"},
                    "maxItems": 10,
                    "examples": [["octocat"]],
                },
            },
            ["repository", "title"],
        ),
    ),
    _tool(
        "search_issues",
        "Search issues and pull requests across the repositories the user can access. "
        "Supports qualifiers such as repo:, is:open, is:closed, label:, author: and "
        "assignee:. Results include the number, title, state, labels, author and URL of each "
        "issue, most recently updated first.",
        _obj(
            "SearchIssuesArgs",
            {
                "query": _p(
                    "string",
                    "Query",
                    "The search query with qualifiers.",
                    ["repo:acme/widgets is:open label:bug"],
                ),
                "max_results": _p(
                    "integer",
                    "Max Results",
                    "How many results to return.",
                    [20],
                    minimum=1,
                    maximum=100,
                    default=20,
                ),
            },
            ["query"],
        ),
    ),
    _tool(
        "send_chat_message",
        "Post a message to a channel or a direct conversation in the team chat. Use this "
        "only when the user explicitly asks you to message someone or a channel. Messages "
        "support the chat's Markdown dialect. Mention people with their user identifiers, "
        "not their display names. To reply in a thread, pass the timestamp of the parent "
        "message as thread_ts.",
        _obj(
            "SendChatMessageArgs",
            {
                "channel": _p(
                    "string",
                    "Channel",
                    "A channel name or conversation id.",
                    ["#general", "D024BE91L"],
                    minLength=1,
                ),
                "text": _p(
                    "string",
                    "Text",
                    "The message.",
                    ["Deploy finished :rocket:"],
                    minLength=1,
                    maxLength=40000,
                ),
                "thread_ts": _p(
                    "string", "Thread Ts", "The parent message's timestamp.", ["1700000000.000100"]
                ),
            },
            ["channel", "text"],
        ),
    ),
    _tool(
        "create_task",
        "Add a task to the user's to-do list. Use this when the user asks you to remember to "
        "do something, or to add an item to a list. A task has a title, optional notes, an "
        "optional due date and a priority. Tasks without a list go to the default list.",
        _obj(
            "CreateTaskArgs",
            {
                "title": _p(
                    "string", "Title", "What needs doing.", ["Renew passport"], minLength=1
                ),
                "notes": _p("string", "Notes", "Details.", ["Bring two photos."]),
                "due": _p(
                    "string", "Due", "The due date, YYYY-MM-DD.", ["2025-04-01"], format="date"
                ),
                "priority": _p(
                    "string",
                    "Priority",
                    "How important the task is.",
                    ["normal"],
                    enum=["low", "normal", "high"],
                    default="normal",
                ),
                "list_id": _p("string", "List Id", "The list to add the task to.", ["default"]),
            },
            ["title"],
        ),
    ),
    _tool(
        "run_sql_query",
        "Run a read-only SQL query against the analytics warehouse and return the rows as a "
        "table. Only SELECT statements are allowed; anything that modifies data is rejected. "
        "Use fully qualified table names (schema.table). Always include a LIMIT clause unless "
        "the query aggregates; results are capped at max_rows rows. Describe the tables you "
        "need with information_schema queries first if you are unsure of their columns. "
        "Queries time out after sixty seconds.",
        _obj(
            "RunSqlQueryArgs",
            {
                "sql": _p(
                    "string",
                    "Sql",
                    "The SELECT statement.",
                    ["SELECT count(*) FROM sales.orders"],
                    minLength=1,
                ),
                "max_rows": _p(
                    "integer",
                    "Max Rows",
                    "Cap on returned rows.",
                    [100],
                    minimum=1,
                    maximum=10000,
                    default=100,
                ),
            },
            ["sql"],
        ),
    ),
    _tool(
        "convert_currency",
        "Convert an amount of money from one currency to another at the latest exchange rate, "
        "or at the rate of a given date. Currencies are ISO 4217 codes. The response includes "
        "the converted amount, the rate used and its date.",
        _obj(
            "ConvertCurrencyArgs",
            {
                "amount": _p(
                    "number", "Amount", "The amount to convert.", [100, 12.5], exclusiveMinimum=0
                ),
                "from_currency": _p(
                    "string", "From Currency", "ISO 4217 code.", ["EUR"], pattern="^[A-Z]{3}$"
                ),
                "to_currency": _p(
                    "string", "To Currency", "ISO 4217 code.", ["USD"], pattern="^[A-Z]{3}$"
                ),
                "date": _p(
                    "string",
                    "Date",
                    "The rate's date, YYYY-MM-DD; default today.",
                    ["2025-01-31"],
                    format="date",
                ),
            },
            ["amount", "from_currency", "to_currency"],
        ),
    ),
    _tool(
        "get_directions",
        "Get directions between two places by car, public transport, bicycle or on foot. The "
        "response includes the total distance and duration, and step-by-step instructions. "
        "Use departure_time for public transport so that the schedule is taken into account.",
        _obj(
            "GetDirectionsArgs",
            {
                "origin": _p(
                    "string",
                    "Origin",
                    "Where to start: an address or place name.",
                    ["Gare du Nord, Paris"],
                    minLength=1,
                ),
                "destination": _p(
                    "string", "Destination", "Where to go.", ["Louvre Museum, Paris"], minLength=1
                ),
                "mode": _p(
                    "string",
                    "Mode",
                    "How to travel.",
                    ["transit"],
                    enum=["driving", "transit", "bicycling", "walking"],
                    default="driving",
                ),
                "departure_time": _p(
                    "string",
                    "Departure Time",
                    _DATETIME,
                    ["2025-03-14T08:00:00+01:00"],
                    format="date-time",
                ),
            },
            ["origin", "destination"],
        ),
    ),
]
assert len(TOOLS) == 20

SYSTEM_PROMPT = (
    "You are Atlas, a personal assistant with access to the user's calendar, email, files, "
    "tasks and team chat, and to the web. The user is Dana Reyes, a product manager based in "
    "Lisbon (time zone Europe/Lisbon). Today is Friday 14 March 2025.\n\n"
    "Guidelines:\n"
    "- Be concise. Answer in the language the user writes in.\n"
    "- Use tools to look things up instead of guessing; never invent identifiers.\n"
    "- Before anything that sends, deletes or changes data on the user's behalf (emails, "
    "chat messages, calendar changes), show what you are about to do and ask for "
    "confirmation, unless the user has clearly asked for exactly that action.\n"
    "- When you use information from the web, cite the URLs.\n"
    "- Dates and times: use the user's time zone unless told otherwise.\n"
    "- If a tool fails, say so plainly and suggest what the user could do."
)


def agent_request() -> ChatRequest:
    """A mid-conversation agent turn with all 20 tools offered (tool_choice auto)."""
    return ChatRequest.model_validate(
        {
            "model": "assistant",
            "temperature": 0,
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {
                    "role": "user",
                    "content": "Do I have anything with Priya next week? If not, find a free "
                    "hour on Tuesday afternoon and draft an invite about the Q2 roadmap.",
                },
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {
                                "name": "search_calendar_events",
                                "arguments": orjson.dumps(
                                    {
                                        "query": "Priya",
                                        "time_min": "2025-03-17T00:00:00+00:00",
                                        "time_max": "2025-03-22T00:00:00+00:00",
                                    }
                                ).decode(),
                            },
                        }
                    ],
                },
                {
                    "role": "tool",
                    "tool_call_id": "call_1",
                    "content": orjson.dumps(
                        {
                            "events": [],
                            "calendars_searched": ["primary", "product-team"],
                            "range": ["2025-03-17T00:00:00+00:00", "2025-03-22T00:00:00+00:00"],
                        }
                    ).decode(),
                },
            ],
            "tools": TOOLS,
            "tool_choice": "auto",
        }
    )


# ---- schema equivalence -------------------------------------------------------------------


def _wrong_value(schema: dict[str, Any]) -> Any:
    kind = schema.get("type")
    wrong = {"string": 12345, "integer": "7", "number": "7.5", "boolean": "yes", "array": "a"}
    return wrong.get(str(kind))


def _example(schema: dict[str, Any], defs: dict[str, Any]) -> Any:
    if "$ref" in schema:
        target = defs[schema["$ref"].rsplit("/", 1)[-1]]
        return _example({**target, **{k: v for k, v in schema.items() if k != "$ref"}}, defs)
    if schema.get("examples"):
        return copy.deepcopy(schema["examples"][0])
    if "default" in schema:
        return copy.deepcopy(schema["default"])
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "array":
        items = schema.get("items", {})
        return [_example(items, defs)] if isinstance(items, dict) and items else []
    return {"string": "x", "integer": 1, "number": 1.5, "boolean": True}.get(str(kind))


def sample_instances(schema: dict[str, Any]) -> Iterator[Any]:
    """Instances around what an object schema accepts: valid ones, and near misses."""
    props: dict[str, Any] = schema.get("properties", {})
    defs: dict[str, Any] = schema.get("$defs", {})
    required: list[str] = schema.get("required", [])
    full = {name: _example(p, defs) for name, p in props.items()}
    minimal = {name: full[name] for name in required}
    yield full
    yield minimal
    yield {**full, "unexpected_extra": 1}
    for name in required:
        yield {k: v for k, v in full.items() if k != name}
    for name, p in props.items():
        resolved = defs.get(p["$ref"].rsplit("/", 1)[-1], {}) if "$ref" in p else p
        yield {**minimal, name: _wrong_value(resolved)}
        yield {**minimal, name: None}
        if "enum" in resolved:
            yield {**minimal, name: "not-in-enum"}
        if "minimum" in resolved:
            yield {**minimal, name: resolved["minimum"] - 1}
        if "maximum" in resolved:
            yield {**minimal, name: resolved["maximum"] + 1}
        if "exclusiveMinimum" in resolved:
            yield {**minimal, name: resolved["exclusiveMinimum"]}
        if "minLength" in resolved:
            yield {**minimal, name: ""}
        if "maxLength" in resolved:
            yield {**minimal, name: "y" * (resolved["maxLength"] + 1)}
        if "pattern" in resolved:
            yield {**minimal, name: "no match!"}
        if "format" in resolved:
            yield {**minimal, name: "not-a-" + str(resolved["format"])}
        if resolved.get("type") == "array":
            yield {**minimal, name: []}
            yield {**minimal, name: ["dup", "dup"]}
            yield {**minimal, name: [1, 2]}
            yield {**minimal, name: ["z"] * 11}
    yield []
    yield "text"
    yield None


def verdicts_agree(before: dict[str, Any], after: dict[str, Any]) -> tuple[int, int, int]:
    """(instances checked, of which valid, disagreements) with and without format checks."""
    checked = valid = disagreements = 0
    checkers = [None, jsonschema.Draft202012Validator.FORMAT_CHECKER]
    for checker in checkers:
        a = jsonschema.Draft202012Validator(before, format_checker=checker)
        b = jsonschema.Draft202012Validator(after, format_checker=checker)
        for instance in sample_instances(before):
            va, vb = a.is_valid(instance), b.is_valid(instance)
            checked += 1
            valid += va
            disagreements += va != vb
    return checked, valid, disagreements


# ---- part B -------------------------------------------------------------------------------


def compaction_figures(tokenizers: dict[str, Tokenizer]) -> dict[str, Any]:
    request = agent_request()
    profiles = {
        "schemas_only": CompactionSettings(enabled=True, max_tool_description_chars=None),
        "default": CompactionSettings(enabled=True),
        "tight": CompactionSettings(
            enabled=True, max_tool_description_chars=200, max_schema_description_chars=80
        ),
    }
    out: dict[str, Any] = {
        "request": {
            "tools": len(TOOLS),
            "messages": len(request.messages),
            "tool_choice": "auto",
            "tools_json_chars": len(orjson.dumps(TOOLS)),
        },
        "profiles": {},
    }
    for name, settings in profiles.items():
        # Cold: the first request with these tools; warm: an agent's later turns, whose
        # identical tool definitions are memoised.
        _compact_function_memo.cache_clear()
        started = time.perf_counter()
        compact(request, settings)
        cold_ms = (time.perf_counter() - started) * 1000
        started = time.perf_counter()
        rounds = 200
        for _ in range(rounds):
            compacted, report = compact(request, settings)
        compact_ms = (time.perf_counter() - started) * 1000 / rounds
        before_tools = {t.function.name: t.function.parameters or {} for t in request.tools or ()}
        checked = valid = disagreements = 0
        for tool in compacted.tools or ():
            c, v, d = verdicts_agree(
                before_tools[tool.function.name], tool.function.parameters or {}
            )
            checked, valid, disagreements = checked + c, valid + v, disagreements + d
        tokens = {}
        for tk_name, tk in tokenizers.items():
            before, after = count_tokens(request, tk), count_tokens(compacted, tk)
            tokens[tk_name] = {
                "prompt_tokens_before": before,
                "prompt_tokens_after": after,
                "saving_percent": round(100 * (before - after) / before, 1),
            }
        out["profiles"][name] = {
            "settings": settings.model_dump(),
            "report": {
                "descriptions_trimmed": report.descriptions_trimmed,
                "schema_keywords_dropped": report.schema_keywords_dropped,
                "tools_dropped": list(report.tools_dropped),
                "schemas_left_alone": list(report.schemas_left_alone),
                "tool_chars_before": report.tool_chars_before,
                "tool_chars_after": report.tool_chars_after,
            },
            "tokens": tokens,
            "compact_ms_first_request": round(cold_ms, 3),
            "compact_ms_per_request_warm": round(compact_ms, 3),
            "schema_check": {
                "instances_checked": checked,
                "valid_instances": valid,
                "invalid_instances": checked - valid,
                "disagreements": disagreements,
            },
        }
    # tool_choice naming one function: only that tool (and those already called) stay.
    forced = ChatRequest.model_validate(
        {
            **request.model_dump(exclude_none=True, by_alias=True),
            "tool_choice": {"type": "function", "function": {"name": "create_calendar_event"}},
        }
    )
    compacted, report = compact(forced, profiles["default"])
    tk_name = "o200k_base" if "o200k_base" in tokenizers else "approximation"
    tk = tokenizers[tk_name]
    before, after = count_tokens(forced, tk), count_tokens(compacted, tk)
    out["named_tool_choice"] = {
        "tool_choice": "create_calendar_event",
        "tools_after": [t.function.name for t in compacted.tools or ()],
        "tokenizer": tk_name,
        "prompt_tokens_before": before,
        "prompt_tokens_after": after,
        "saving_percent": round(100 * (before - after) / before, 1),
    }
    return out


# ---- part A -------------------------------------------------------------------------------

ANSWER_TEXT = (
    "Here is a summary of the three options you asked about. "
    "The first keeps the current architecture and adds a read replica; it is the cheapest "
    "and can ship this quarter, but it does not address write contention. "
) * 9


def sample_answer() -> CachedAnswer:
    response = ChatResponse(
        choices=(Choice(index=0, content=ANSWER_TEXT, finish_reason="stop"),),
        usage=Usage(prompt_tokens=5100, completion_tokens=420),
        upstream_model="gpt-4o-2024-08-06",
        created=1741940000,
    )
    return CachedAnswer.from_response(response, "openai-primary")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def summary_ms(samples_ns: list[int]) -> dict[str, float | int]:
    ms = [s / 1e6 for s in samples_ns]
    return {
        "n": len(ms),
        "p50_ms": round(percentile(ms, 50), 4),
        "p99_ms": round(percentile(ms, 99), 4),
        "max_ms": round(max(ms), 4),
        "mean_ms": round(statistics.fmean(ms), 4),
    }


async def hit_latency(store: CacheStore, hits: int, puts: int) -> dict[str, Any]:
    answer = sample_answer()
    key = cache_key(
        agent_request(),
        route="assistant",
        deployment_scope=["openai-primary", "azure-backup"],
        policy_names=["eu-only"],
        data_class=None,
        tenant="key_123",
    )
    await store.start()
    put_ns: list[int] = []
    for i in range(puts):
        t0 = time.perf_counter_ns()
        await store.put(f"{key[:-6]}{i:06d}", answer, 3600)
        put_ns.append(time.perf_counter_ns() - t0)
    assert await store.put(key, answer, 3600)
    for _ in range(min(500, hits // 10)):  # warm-up
        found = await store.get(key)
        assert found is not None
        found.to_chunks()
    hit_ns: list[int] = []
    for _ in range(hits):
        t0 = time.perf_counter_ns()
        found = await store.get(key)
        assert found is not None
        chunks = found.to_chunks()
        hit_ns.append(time.perf_counter_ns() - t0)
    assert "".join(c.content or "" for c in chunks) == ANSWER_TEXT
    miss_ns: list[int] = []
    for i in range(min(hits, 2000)):
        t0 = time.perf_counter_ns()
        assert await store.get(f"absent{i}") is None
        miss_ns.append(time.perf_counter_ns() - t0)
    await store.aclose()
    return {
        "hit_get_plus_to_chunks": summary_ms(hit_ns),
        "miss_get": summary_ms(miss_ns),
        "put": summary_ms(put_ns),
        "entry_bytes": len(answer.to_bytes()),
    }


def key_cost(rounds: int) -> dict[str, Any]:
    request = agent_request()
    samples: list[int] = []
    for _ in range(rounds):
        t0 = time.perf_counter_ns()
        cache_key(
            request,
            route="assistant",
            deployment_scope=["openai-primary", "azure-backup"],
            policy_names=["eu-only"],
            data_class=None,
            tenant="key_123",
        )
        samples.append(time.perf_counter_ns() - t0)
    return {"request_json_chars": len(request.model_dump_json()), **summary_ms(samples)}


# ---- the run ------------------------------------------------------------------------------


def machine_facts() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break

    def version(name: str) -> str | None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {
        "date_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpu_model": cpu,
        "cpu_cores_usable": len(os.sched_getaffinity(0)),
        "os": f"{platform.system()} {platform.release()}",
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "sqlite": __import__("sqlite3").sqlite_version,
        "versions": {n: version(n) for n in ("hedge", "orjson", "jsonschema", "tiktoken")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bpe", help="a local o200k_base.tiktoken(.gz) file for exact counts")
    parser.add_argument("--hits", type=int, default=20000)
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    args = parser.parse_args()

    tokenizers: dict[str, Callable[[str], int]] = {"approximation": approx_tokens}
    bpe = Path(args.bpe) if args.bpe else bundled_bpe_file("o200k_base")
    exact_note = "no local o200k_base BPE file: approximation only"
    if bpe is not None:
        try:
            tokenizers["o200k_base"] = tiktoken_tokenizer(bpe, "o200k_base")
            exact_note = f"o200k_base from {bpe} (SHA-256 checked)"
        except (ImportError, ValueError, OSError) as e:
            exact_note = f"o200k_base unavailable ({e}): approximation only"

    results: dict[str, Any] = {
        "benchmark": "cache_and_compaction",
        "command": " ".join([".venv/bin/python", "bench/cache_and_compaction.py", *sys.argv[1:]]),
        "machine": machine_facts(),
        "targets": {
            "memory_hit_p99_ms": 1.0,
            "sqlite_hit_p99_ms": 3.0,
            "compaction_saving_percent": 30.0,
        },
    }
    with tempfile.TemporaryDirectory(prefix="hedge-bench-") as tmp:
        memory = asyncio.run(
            hit_latency(MemoryStore(max_entries=10_000, max_bytes=64 << 20), args.hits, puts=2000)
        )
        sqlite = asyncio.run(
            hit_latency(
                SqliteStore(Path(tmp) / "cache.db", max_entries=10_000, max_bytes=64 << 20),
                args.hits,
                puts=2000,
            )
        )
    results["cache"] = {"memory": memory, "sqlite": sqlite, "cache_key": key_cost(2000)}
    results["compaction"] = {"tokenizers": exact_note, **compaction_figures(tokenizers)}
    if "o200k_base" in tokenizers:
        texts = [orjson.dumps(t["function"]).decode() for t in TOOLS] + [SYSTEM_PROMPT]
        exact = sum(tokenizers["o200k_base"](t) for t in texts)
        approx = sum(approx_tokens(t) for t in texts)
        results["compaction"]["approximation_vs_o200k_on_the_tools"] = {
            "o200k_base": exact,
            "approximation": approx,
            "ratio": round(approx / exact, 3),
        }

    best = "o200k_base" if "o200k_base" in tokenizers else "approximation"
    default_saving = results["compaction"]["profiles"]["default"]["tokens"][best]
    results["met"] = {
        "memory_hit_p99": memory["hit_get_plus_to_chunks"]["p99_ms"] < 1.0,
        "sqlite_hit_p99": sqlite["hit_get_plus_to_chunks"]["p99_ms"] < 3.0,
        f"compaction_saving_default_{best}": default_saving["saving_percent"] >= 30.0,
        "schemas_accept_the_same": all(
            p["schema_check"]["disagreements"] == 0
            for p in results["compaction"]["profiles"].values()
        ),
    }
    results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2) + b"\n")
    print_table(results, tokenizers)
    print(f"\nwritten to {args.out}")


def print_table(results: dict[str, Any], tokenizers: dict[str, Tokenizer]) -> None:
    print("A. cache hit latency (get + to_chunks), in process")
    for name in ("memory", "sqlite"):
        r = results["cache"][name]
        h, p = r["hit_get_plus_to_chunks"], r["put"]
        print(
            f"  {name:7} hit p50 {h['p50_ms']:.4f} ms  p99 {h['p99_ms']:.4f} ms  "
            f"(put p50 {p['p50_ms']:.4f} ms, p99 {p['p99_ms']:.4f} ms; n={h['n']})"
        )
    k = results["cache"]["cache_key"]
    print(f"  cache_key on the agent request: p50 {k['p50_ms']:.4f} ms, p99 {k['p99_ms']:.4f} ms")
    c = results["compaction"]
    print(f"B. compaction of a 20-tool agent request ({c['tokenizers']})")
    for name, prof in c["profiles"].items():
        for tk_name in tokenizers:
            t = prof["tokens"][tk_name]
            print(
                f"  {name:7} {tk_name:13} {t['prompt_tokens_before']:6} -> "
                f"{t['prompt_tokens_after']:6} tokens  saving {t['saving_percent']:5.1f}%"
            )
        s = prof["schema_check"]
        print(
            f"          schemas: {s['instances_checked']} instances ({s['valid_instances']} "
            f"valid), {s['disagreements']} disagreements; compact() "
            f"{prof['compact_ms_first_request']} ms first, "
            f"{prof['compact_ms_per_request_warm']} ms warm"
        )
    n = c["named_tool_choice"]
    print(
        f"  named tool_choice: {n['prompt_tokens_before']} -> {n['prompt_tokens_after']} "
        f"({n['tokenizer']}), saving {n['saving_percent']}%, tools left {n['tools_after']}"
    )
    print("met:", results["met"])


if __name__ == "__main__":
    main()
